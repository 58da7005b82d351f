// Command extension is the token-vendor Lambda extension (layer
// /opt/extensions/token-vendor): tokens for the function beside it on
// http://127.0.0.1:TOKEN_VENDOR_PORT, fetched by invoking TOKEN_VENDOR_FUNCTION.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/extension"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stdout, nil)).With("extension", extension.Name)
	if err := run(log); err != nil {
		log.Error("extension stopped", "error", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	fn := os.Getenv("TOKEN_VENDOR_FUNCTION")
	if fn == "" {
		return fmt.Errorf("TOKEN_VENDOR_FUNCTION is not set: the name or ARN of the vend function")
	}
	port := extension.DefaultPort
	if v := os.Getenv("TOKEN_VENDOR_PORT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("TOKEN_VENDOR_PORT: want a port number")
		}
		port = n
	}
	ctx := context.Background()
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	// The consumer's own role invokes and proves itself to the vendor.
	cache := extension.New(client.NewLambdaInvokerFromConfig(cfg, fn), os.Getenv("AWS_SESSION_TOKEN"), log)
	if v := os.Getenv("TOKEN_VENDOR_DPOP_POOL"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > extension.MaxProofPool {
			return fmt.Errorf("TOKEN_VENDOR_DPOP_POOL: want the DPoP proofs to sign per vend call, 1 to %d", extension.MaxProofPool)
		}
		cache.WithProofPool(n)
	}
	return extension.Run(ctx, extension.Config{RuntimeAPI: os.Getenv("AWS_LAMBDA_RUNTIME_API"), Addr: fmt.Sprintf("127.0.0.1:%d", port), Cache: cache, Log: log})
}
