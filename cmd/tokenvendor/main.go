// Command tokenvendor runs the vendor locally.
//
//	tokenvendor serve   [--addr 127.0.0.1:8080] [--providers FILE] [--table T] [--secret-prefix P] …
//	tokenvendor token   PROVIDER [--scope S] [--min-ttl N] [same configuration flags]
//	tokenvendor sandbox [--addr 127.0.0.1:8081]
//
// With no --providers and no --secret-prefix, serve and token start the
// built-in sandbox authorization server with demo providers in each seed
// style (demo-k2, demo-mobi, demo-dot), so tokens are vended at once with no
// account anywhere.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/obs"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

const usage = `usage:
  tokenvendor serve   [--addr 127.0.0.1:8080] [--providers FILE] [--table TABLE [--create-table]] [--secret-prefix PREFIX] [--kms-key KEY] [--l1-max-age S] [--log-level L]
  tokenvendor token   PROVIDER [--scope "read write"] [--min-ttl SECONDS] [configuration flags as for serve]
  tokenvendor jwks    PROVIDER [configuration flags as for serve]   (the public JWK Set to register for private_key_jwt)
  tokenvendor sandbox [--addr 127.0.0.1:8081]`

// exitUsage is the status for bad flags, arguments or files.
const exitUsage = 2

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is reported as one line, exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], stdout, stderr)
	case "token":
		err = token(ctx, args[1:], stdout, stderr)
	case "jwks":
		err = jwks(ctx, args[1:], stdout)
	case "sandbox":
		err = runSandbox(ctx, args[1:], stdout)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return 0
	default:
		err = usageError{fmt.Sprintf("unknown command %q (want serve, token, jwks or sandbox)", args[0])}
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "tokenvendor: "+oneLine(ue.msg))
		return exitUsage
	default:
		fmt.Fprintln(stderr, "tokenvendor: "+oneLine(err.Error()))
		return 1
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// settings are the configuration flags serve and token share; each mirrors
// an environment variable of the Lambda functions.
type settings struct {
	providers, table, secretPrefix, kmsKey, logLevel string
	createTable                                      bool
	l1MaxAge                                         int
	awsClients                                       bool // load AWS clients even with no table, secrets or sealing key
}

func (s *settings) register(fs *flag.FlagSet, env func(string) string) {
	fs.StringVar(&s.providers, "providers", env("PROVIDERS_FILE"), "JSON file of provider name -> definition (PROVIDERS_FILE)")
	fs.StringVar(&s.table, "table", env("TOKEN_TABLE"), "DynamoDB table for the shared cache (TOKEN_TABLE); default in-memory")
	fs.BoolVar(&s.createTable, "create-table", false, "create --table if it does not exist (for DynamoDB Local)")
	fs.StringVar(&s.secretPrefix, "secret-prefix", env("PROVIDER_SECRET_PREFIX"), "read providers from Secrets Manager under this prefix (PROVIDER_SECRET_PREFIX)")
	fs.StringVar(&s.kmsKey, "kms-key", env("TOKEN_KMS_KEY_ID"), "KMS key to seal cached tokens (TOKEN_KMS_KEY_ID)")
	fs.StringVar(&s.logLevel, "log-level", orDefault(env("LOG_LEVEL"), "info"), "debug, info, warn or error (LOG_LEVEL)")
	fs.IntVar(&s.l1MaxAge, "l1-max-age", -1, "seconds a token is reused from memory (L1_MAX_AGE, default 15)")
}

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	// Flags may come before or after positional arguments.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// build wires the vendor as configured; with no provider source it starts
// the sandbox and uses its demo providers. The returned stop closes the sandbox.
func (s *settings) build(ctx context.Context, stderr io.Writer) (*app.App, func(), error) {
	cfg, err := app.FromEnv(os.Getenv)
	if err != nil {
		return nil, nil, usageError{err.Error()}
	}
	cfg.Table, cfg.SecretPrefix, cfg.ProvidersFile, cfg.KMSKeyID, cfg.LogLevel = s.table, s.secretPrefix, s.providers, s.kmsKey, s.logLevel
	if s.l1MaxAge >= 0 {
		cfg.L1MaxAge = time.Duration(s.l1MaxAge) * time.Second
		if s.l1MaxAge == 0 {
			cfg.L1MaxAge = -1
		}
	}
	if os.Getenv("METRICS_NAMESPACE") == "" {
		cfg.MetricsNamespace = "off" // EMF is for CloudWatch; locally it would only clutter stdout
	}
	stop := func() {}
	if cfg.ProvidersFile != "" {
		if _, err := os.Stat(cfg.ProvidersFile); err != nil {
			return nil, nil, usageError{fmt.Sprintf("--providers: %v", err)}
		}
	}
	if cfg.ProvidersFile == "" && cfg.SecretPrefix == "" {
		srv, base, err := startSandbox("127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		cfg.StaticProviders = sandbox.DemoProviders(srv.sb, base)
		stop = func() { srv.Close() }
	}
	var clients app.Clients
	var awsCfg aws.Config
	if cfg.Table != "" || cfg.SecretPrefix != "" || cfg.KMSKeyID != "" || s.awsClients {
		awsCfg, err = awsconfig.LoadDefaultConfig(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("AWS configuration: %w", err)
		}
		clients = app.AWSClients(awsCfg)
		if s.createTable && cfg.Table != "" {
			if err := dynamostore.CreateTable(ctx, clients.DynamoDB, cfg.Table); err != nil {
				return nil, nil, err
			}
		}
	}
	a, err := app.New(cfg, clients, obs.NewLogger(stderr, cfg.LogLevel))
	if err != nil {
		stop()
		var fe *provider.FieldError
		if errors.As(err, &fe) || strings.Contains(err.Error(), "providers file") {
			return nil, nil, usageError{err.Error()}
		}
		return nil, nil, err
	}
	a.AWS = awsCfg
	return a, stop, nil
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address (loopback unless told otherwise)")
	var s settings
	s.register(fs, os.Getenv)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("serve takes no arguments (got %q)", pos[0])}
	}
	a, stop, err := s.build(ctx, stderr)
	if err != nil {
		return err
	}
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *addr, err)
	}
	names, _ := a.Providers.Names(ctx)
	fmt.Fprintf(stdout, "token-vendor listening on http://%s\n", ln.Addr())
	fmt.Fprintf(stdout, "providers: %s\n", strings.Join(names, ", "))
	fmt.Fprintf(stdout, "try: curl -s http://%s/v1/tokens/%s\n", ln.Addr(), firstOr(names, "PROVIDER"))
	srv := &http.Server{Handler: a.Handler, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	a.Log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

func firstOr(list []string, d string) string {
	if len(list) > 0 {
		return list[0]
	}
	return d
}

func token(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	scope := fs.String("scope", "", "space-separated scopes")
	minTTL := fs.Int("min-ttl", -1, "least seconds of life the token must have left (default 60)")
	var s settings
	s.register(fs, os.Getenv)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"token takes exactly one PROVIDER argument"}
	}
	if *minTTL < -1 || *minTTL > int(vend.MaxMinTTL/time.Second) {
		return usageError{fmt.Sprintf("--min-ttl must be from 0 to %d", int(vend.MaxMinTTL/time.Second))}
	}
	a, stop, err := s.build(ctx, io.Discard)
	if err != nil {
		return err
	}
	defer stop()
	req := vend.Request{Provider: pos[0], Scope: *scope, MinTTL: -1}
	if *minTTL >= 0 {
		req.MinTTL = time.Duration(*minTTL) * time.Second
	}
	// The CLI is an operator path: whoever runs it reads the provider
	// secrets and the table directly, so the gate admits it for every
	// provider, and its audit record (on stderr) names them where AWS can.
	g := gate.New(a.Vendor, a.Providers, obs.NewLogger(stderr, "info"), nil).WithPolicy(a.Config.Policy())
	t, err := g.Token(identity.NewContext(ctx, operator(ctx, a)), req)
	if err != nil {
		return refusal(err, pos[0])
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(wire.NewTokenResponse(t, time.Now()))
}

// operator is who runs the CLI: the principal its AWS credentials are,
// when it uses AWS (one sts:GetCallerIdentity), else the local user.
func operator(ctx context.Context, a *app.App) identity.Caller {
	c := identity.Caller{Path: authz.PathCLI, Problem: identity.NoIdentity, Detail: "tokenvendor CLI without AWS credentials"}
	if u, err := user.Current(); err == nil {
		c.Detail += " (local user " + u.Username + ")"
	}
	if a.AWS.Credentials == nil {
		return c
	}
	out, err := sts.NewFromConfig(a.AWS).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		c.Detail = "tokenvendor CLI: sts:GetCallerIdentity failed: " + oneLine(err.Error())
		return c
	}
	return identity.Caller{Path: authz.PathCLI, ARN: aws.ToString(out.Arn), Account: aws.ToString(out.Account)}
}

// refusal is the one line the CLI prints for a refused request: the error
// code and description callers of the HTTP API would get.
func refusal(err error, provider string) error {
	p := wire.Classify(err, provider)
	return errors.New(p.Body.Error + ": " + p.Body.ErrorDescription)
}

// jwks prints the public JWK Set of a private_key_jwt provider's signing
// key (from KMS GetPublicKey, or from its PEM): what to register at the
// provider. Never a private key.
func jwks(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("jwks", flag.ContinueOnError)
	var s settings
	s.register(fs, os.Getenv)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"jwks takes exactly one PROVIDER argument"}
	}
	// The signing key may be in KMS: load AWS clients when a region is set.
	s.awsClients = os.Getenv("AWS_REGION") != "" || os.Getenv("AWS_DEFAULT_REGION") != ""
	a, stop, err := s.build(ctx, io.Discard)
	if err != nil {
		return err
	}
	defer stop()
	def, err := a.Providers.Get(ctx, pos[0])
	if err != nil {
		return refusal(err, pos[0])
	}
	if def.AuthMethod != provider.AuthPrivateKeyJWT {
		return usageError{fmt.Sprintf("provider %q uses %s, not private_key_jwt: it has no signing key", pos[0], def.AuthMethod)}
	}
	out, err := a.Keys.JWKS(ctx, def)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, string(out))
	return err
}

type sandboxServer struct {
	*http.Server
	sb *sandbox.Server
}

func startSandbox(addr string) (*sandboxServer, string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("sandbox: listen %s: %w", addr, err)
	}
	sb := sandbox.New()
	srv := &sandboxServer{Server: &http.Server{Handler: sb.Handler(), ReadHeaderTimeout: 5 * time.Second}, sb: sb}
	go srv.Serve(ln)
	return srv, "http://" + ln.Addr().String(), nil
}

func runSandbox(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("sandbox", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8081", "listen address")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("sandbox takes no arguments (got %q)", pos[0])}
	}
	srv, base, err := startSandbox(*addr)
	if err != nil {
		return err
	}
	defs := sandbox.DemoProviders(srv.sb, base)
	fmt.Fprintf(os.Stderr, "sandbox authorization server on %s; demo providers file follows on stdout\n", base)
	if err := writeProvidersFile(stdout, defs); err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// writeProvidersFile prints definitions in the --providers file format.
func writeProvidersFile(w io.Writer, defs map[string]*provider.Definition) error {
	names := make([]string, 0, len(defs))
	for n := range defs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make(map[string]*provider.Definition, len(defs))
	for _, n := range names {
		out[n] = defs[n]
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
