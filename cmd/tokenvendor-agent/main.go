// Command tokenvendor-agent is the token-vendor agent for containers and
// instances (an ECS or EKS sidecar, a systemd service on EC2): the
// extension's local API on loopback, tokens fetched by invoking the vend
// function with the task's, pod's or instance's role (docs/agent.md).
//
//	tokenvendor-agent [--addr 127.0.0.1:2790] [--function NAME|ARN] [--token-file PATH] [--renew-every 10s] [--grace 10s]
//	tokenvendor-agent health [--addr 127.0.0.1:2790]
//
// Flags override the environment: TOKEN_VENDOR_AGENT_ADDR,
// TOKEN_VENDOR_FUNCTION, TOKEN_VENDOR_AGENT_TOKEN (the value; no flag, so
// it stays out of process listings) or TOKEN_VENDOR_AGENT_TOKEN_FILE,
// TOKEN_VENDOR_ID. Credentials and region come from the AWS SDK's default
// chain.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/token-vendor/token-vendor/pkg/agent"
	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/extension"
)

// exitUsage is the status for bad flags or configuration.
const exitUsage = 2

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	var err error
	if len(args) > 0 && args[0] == "health" {
		err = health(ctx, args[1:], getenv)
	} else {
		err = serve(ctx, args, getenv, stdout)
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "tokenvendor-agent:", ue.msg)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "tokenvendor-agent:", err)
		return 1
	}
}

func or(v, def string) string {
	if v != "" {
		return v
	}
	return def
}

func health(ctx context.Context, args []string, getenv func(string) string) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("addr", or(getenv("TOKEN_VENDOR_AGENT_ADDR"), agent.DefaultAddr), "the agent's address")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if err := agent.Loopback(*addr); err != nil {
		return usageError{err.Error()}
	}
	return agent.Healthy(ctx, *addr)
}

func serve(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("tokenvendor-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("addr", or(getenv("TOKEN_VENDOR_AGENT_ADDR"), agent.DefaultAddr), "loopback host:port to listen on")
	fn := fs.String("function", getenv("TOKEN_VENDOR_FUNCTION"), "the vend function's name or ARN")
	tokenFile := fs.String("token-file", getenv("TOKEN_VENDOR_AGENT_TOKEN_FILE"), "file holding the agent token (created with a random one if absent)")
	renewEvery := fs.Duration("renew-every", 10*time.Second, "how often tokens past their refresh point are renewed")
	grace := fs.Duration("grace", 10*time.Second, "how long requests in flight may take to finish after SIGTERM")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if err := agent.Loopback(*addr); err != nil {
		return usageError{err.Error()}
	}
	if *fn == "" {
		return usageError{"no vend function: set TOKEN_VENDOR_FUNCTION or --function (its name or ARN)"}
	}
	if *renewEvery < time.Second || *grace <= 0 {
		return usageError{"--renew-every must be at least 1s and --grace positive"}
	}
	token, err := agent.LoadToken(getenv("TOKEN_VENDOR_AGENT_TOKEN"), *tokenFile)
	if err != nil {
		return usageError{err.Error()}
	}
	cfg, err := loadAWS(ctx, *fn)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stdout, nil)).With("agent", "token-vendor")
	// The task's, pod's or instance's own role invokes and proves itself
	// to the vendor, so its allowed_callers apply unchanged.
	cache := extension.New(client.NewLambdaInvokerFromConfig(cfg, *fn), token, log)
	return agent.Run(ctx, agent.Config{Addr: *addr, Token: token, Cache: cache, RenewEvery: *renewEvery, Grace: *grace, Log: log})
}

// loadAWS loads the SDK's default chain (environment, ECS or EKS container
// credentials, IRSA web identity, the instance profile). The region comes
// from the configuration, else the function's ARN, else the instance's
// metadata.
func loadAWS(ctx context.Context, fn string) (aws.Config, error) {
	var opts []func(*awsconfig.LoadOptions) error
	if a, err := arn.Parse(fn); err == nil && a.Region != "" {
		opts = append(opts, awsconfig.WithDefaultRegion(a.Region))
	} else {
		opts = append(opts, awsconfig.WithEC2IMDSRegion())
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return aws.Config{}, usageError{"no AWS region: set AWS_REGION or give the vend function's ARN"}
	}
	return cfg, nil
}
