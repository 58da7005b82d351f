// Package app wires the vendor from configuration: environment variables in
// Lambda, flags and environment in local mode. Functions' main packages and
// the CLI call it; nothing else reads the environment.
package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/envelope"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/obs"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/webidentity"
)

// Config is everything the vendor can be told.
type Config struct {
	Table            string        // TOKEN_TABLE: DynamoDB table; empty: in-memory cache
	SecretPrefix     string        // PROVIDER_SECRET_PREFIX: Secrets Manager; empty: ProvidersFile
	ProvidersFile    string        // PROVIDERS_FILE: JSON file of name -> definition
	KMSKeyID         string        // TOKEN_KMS_KEY_ID: seal tokens at rest
	L1MaxAge         time.Duration // L1_MAX_AGE seconds (15)
	DefaultMinTTL    time.Duration // DEFAULT_MIN_TTL seconds (60)
	UpstreamTimeout  time.Duration // UPSTREAM_TIMEOUT seconds (5)
	UpstreamAttempts int           // UPSTREAM_ATTEMPTS (3)
	LeaseMargin      time.Duration // LEASE_MARGIN seconds (10)
	MaxCacheSeconds  int64         // MAX_CACHE_SECONDS (86400)
	ProviderCacheTTL time.Duration // PROVIDER_CACHE_TTL seconds (300)
	RefreshInterval  time.Duration // REFRESH_INTERVAL seconds (60): the refresher's schedule
	IdleAfter        time.Duration // IDLE_AFTER seconds (86400): keys not vended for this long are not renewed
	RefreshParallel  int           // REFRESH_CONCURRENCY (64): renewals a refresher run keeps in flight
	LogLevel         string        // LOG_LEVEL (info)
	MetricsNamespace string        // METRICS_NAMESPACE (TokenVendor); "off" disables metrics
	// ListProviderSecrets (LIST_PROVIDER_SECRETS, true): /v1/providers lists
	// every secret under the prefix; false lists providers with cached keys.
	ListProviderSecrets bool
	// RefreshAhead lets a read that finds a token past refresh_at renew it in
	// the background. Off in Lambda, which freezes the process as soon as the
	// handler returns: there the scheduled refresher renews.
	RefreshAhead bool
	// RefreshFanOut (REFRESH_FANOUT, false): a scheduled refresher run
	// starts one asynchronous invocation of its own function per
	// refresh-index shard instead of renewing everything itself.
	RefreshFanOut bool
	// FunctionName and FunctionVersion are the Lambda function's own
	// (AWS_LAMBDA_FUNCTION_NAME, AWS_LAMBDA_FUNCTION_VERSION).
	FunctionName, FunctionVersion string

	// VendorID (VENDOR_ID, an override: a Lambda function ARN) is the
	// vendor id direct-invoke identity proofs must be signed for. Empty in
	// Lambda means the unqualified ARN of the function invoked (account,
	// region and name, from the invocation's context), so two stacks never
	// accept each other's proofs; empty outside Lambda verifies none.
	VendorID string
	// STSEndpoint (AWS_ENDPOINT_URL_STS, else the region's) is the only
	// place identity proofs are sent.
	STSEndpoint string

	// ConsumerOrgID (CONSUMER_ORG_ID) and ConsumerAccounts
	// (CONSUMER_ACCOUNT_IDS, comma-separated) are admitted, with the
	// vendor's own account, to providers that name no allowed_callers.
	ConsumerOrgID    string
	ConsumerAccounts []string
	// VendorAccount (VENDOR_ACCOUNT_ID) is the vendor's own account; in
	// Lambda it is also read from each invocation's function ARN.
	VendorAccount string
	// AllowUnverifiedCallers (ALLOW_UNVERIFIED_CALLERS, false) vends
	// providers without allowed_callers to callers with no verified
	// identity (direct invokes without a proof): the old open default.
	AllowUnverifiedCallers bool
	// CursorKeySecret (CURSOR_KEY_SECRET_ARN) is the Secrets Manager secret
	// sealing the providers listing's cursors, shared by the stack's
	// instances; empty: a random key per process.
	CursorKeySecret string

	// StaticProviders, when set, is used instead of any source (local sandbox).
	StaticProviders map[string]*provider.Definition
	// MetricsOutput receives EMF documents (standard output, where Lambda
	// ships them to CloudWatch, when nil).
	MetricsOutput io.Writer
}

// Defaults returns the configuration with every default filled in.
func Defaults() Config {
	return Config{
		L1MaxAge: 15 * time.Second, DefaultMinTTL: 60 * time.Second, UpstreamTimeout: 5 * time.Second,
		UpstreamAttempts: 3, LeaseMargin: 10 * time.Second, MaxCacheSeconds: 86400,
		ProviderCacheTTL: 300 * time.Second, RefreshInterval: 60 * time.Second, IdleAfter: 24 * time.Hour, LogLevel: "info",
		MetricsNamespace: "TokenVendor", ListProviderSecrets: true, RefreshAhead: true,
	}
}

// FromEnv reads the environment over the defaults. A malformed value is an
// error naming the variable.
func FromEnv(getenv func(string) string) (Config, error) {
	c := Defaults()
	c.Table = getenv("TOKEN_TABLE")
	c.SecretPrefix = getenv("PROVIDER_SECRET_PREFIX")
	c.ProvidersFile = getenv("PROVIDERS_FILE")
	c.KMSKeyID = getenv("TOKEN_KMS_KEY_ID")
	c.FunctionName, c.FunctionVersion = getenv("AWS_LAMBDA_FUNCTION_NAME"), getenv("AWS_LAMBDA_FUNCTION_VERSION")
	c.VendorID = getenv("VENDOR_ID")
	if c.VendorID != "" && identity.FunctionARN(c.VendorID, "", "") != c.VendorID {
		return c, fmt.Errorf("VENDOR_ID: want a Lambda function ARN without qualifier (arn:aws:lambda:REGION:ACCOUNT:function:NAME); leave it unset to use the vend function's own")
	}
	if region := getenv("AWS_REGION"); region != "" || getenv("AWS_ENDPOINT_URL_STS") != "" {
		c.STSEndpoint = identity.EndpointFromEnv(getenv, region)
	}
	c.ConsumerOrgID, c.VendorAccount, c.CursorKeySecret = getenv("CONSUMER_ORG_ID"), getenv("VENDOR_ACCOUNT_ID"), getenv("CURSOR_KEY_SECRET_ARN")
	if c.ConsumerOrgID != "" && !orgID.MatchString(c.ConsumerOrgID) {
		return c, fmt.Errorf("CONSUMER_ORG_ID: want an organization id like o-a1b2c3d4e5")
	}
	if c.VendorAccount != "" && !accountID.MatchString(c.VendorAccount) {
		return c, fmt.Errorf("VENDOR_ACCOUNT_ID: want a 12-digit account id")
	}
	for _, a := range strings.Split(getenv("CONSUMER_ACCOUNT_IDS"), ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if !accountID.MatchString(a) {
			return c, fmt.Errorf("CONSUMER_ACCOUNT_IDS: want 12-digit account ids separated by commas")
		}
		c.ConsumerAccounts = append(c.ConsumerAccounts, a)
	}
	if v := getenv("LOG_LEVEL"); v != "" {
		c.LogLevel = v
	}
	if v := getenv("METRICS_NAMESPACE"); v != "" {
		c.MetricsNamespace = v
	}
	for _, b := range []struct {
		name string
		dst  *bool
	}{{"LIST_PROVIDER_SECRETS", &c.ListProviderSecrets}, {"REFRESH_FANOUT", &c.RefreshFanOut}, {"ALLOW_UNVERIFIED_CALLERS", &c.AllowUnverifiedCallers}} {
		if v := getenv(b.name); v != "" {
			parsed, err := strconv.ParseBool(v)
			if err != nil {
				return c, fmt.Errorf("%s: want true or false", b.name)
			}
			*b.dst = parsed
		}
	}
	secs := []struct {
		name     string
		dst      *time.Duration
		min, max int64
	}{
		{"L1_MAX_AGE", &c.L1MaxAge, 0, 3600},
		{"DEFAULT_MIN_TTL", &c.DefaultMinTTL, 0, 86400},
		{"UPSTREAM_TIMEOUT", &c.UpstreamTimeout, 1, 60},
		{"LEASE_MARGIN", &c.LeaseMargin, 1, 300},
		{"PROVIDER_CACHE_TTL", &c.ProviderCacheTTL, 1, 86400},
		{"REFRESH_INTERVAL", &c.RefreshInterval, 1, 86400},
		{"IDLE_AFTER", &c.IdleAfter, 300, 31622400},
	}
	for _, s := range secs {
		v := getenv(s.name)
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < s.min || n > s.max {
			return c, fmt.Errorf("%s: want whole seconds from %d to %d", s.name, s.min, s.max)
		}
		*s.dst = time.Duration(n) * time.Second
	}
	for _, s := range []struct {
		name     string
		set      func(int64)
		min, max int64
	}{
		{"UPSTREAM_ATTEMPTS", func(n int64) { c.UpstreamAttempts = int(n) }, 1, 10},
		{"REFRESH_CONCURRENCY", func(n int64) { c.RefreshParallel = int(n) }, 1, 1024},
		{"MAX_CACHE_SECONDS", func(n int64) { c.MaxCacheSeconds = n }, 60, 31622400},
	} {
		if v := getenv(s.name); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < s.min || n > s.max {
				return c, fmt.Errorf("%s: want a whole number from %d to %d", s.name, s.min, s.max)
			}
			s.set(n)
		}
	}
	if c.L1MaxAge == 0 {
		c.L1MaxAge = -1 // 0 means "no L1"
	}
	if c.RefreshFanOut && c.FunctionName == "" {
		return c, fmt.Errorf("REFRESH_FANOUT: the refresher invokes itself, and AWS_LAMBDA_FUNCTION_NAME is not set")
	}
	return c, nil
}

var (
	accountID = regexp.MustCompile(`^[0-9]{12}$`)
	orgID     = regexp.MustCompile(`^o-[a-z0-9]{10,32}$`)
)

// Policy is who may use providers that name no allowed_callers.
func (c Config) Policy() authz.Policy {
	p := authz.Policy{OrgID: c.ConsumerOrgID, AllowUnverified: c.AllowUnverifiedCallers}
	if c.VendorAccount != "" {
		p.Accounts = append(p.Accounts, c.VendorAccount)
	}
	p.Accounts = append(p.Accounts, c.ConsumerAccounts...)
	return p
}

// Clients are the AWS clients the vendor may use; nil where unused.
type Clients struct {
	DynamoDB       *dynamodb.Client
	SecretsManager *secretsmanager.Client
	KMS            *kms.Client
	// STS gets web identity tokens for aws_web_identity providers.
	STS webidentity.STS
}

// AWSClients builds clients from an AWS config. Endpoints follow the SDK's
// own settings (AWS_ENDPOINT_URL_DYNAMODB, …).
func AWSClients(cfg aws.Config) Clients {
	return Clients{DynamoDB: dynamodb.NewFromConfig(cfg), SecretsManager: secretsmanager.NewFromConfig(cfg), KMS: kms.NewFromConfig(cfg), STS: sts.NewFromConfig(cfg)}
}

// Providers is a provider source that can also list.
type Providers interface {
	Get(ctx context.Context, name string) (*provider.Definition, error)
	Reload(ctx context.Context, name string) (*provider.Definition, error)
	Names(ctx context.Context) ([]string, error)
}

// App is a wired vendor.
type App struct {
	Config Config
	// Vendor is the core; every edge reaches it through Gate.
	Vendor *vend.Vendor
	// Gate is the core behind the authorization pipeline (§11).
	Gate *gate.Gate
	// Proofs verifies direct-invoke identity proofs; nil when STSEndpoint is
	// unset, or outside Lambda with no VendorID (then direct invokes have no
	// identity).
	Proofs    *identity.Verifier
	Providers Providers
	Handler   *httpapi.Handler
	Log       *slog.Logger
	Metrics   *obs.Metrics
	// Keys signs private_key_jwt assertions and prints their JWK Sets.
	Keys *assertion.Keys
	// DPoP signs DPoP proofs with providers' DPoP keys (RFC 9449).
	DPoP *dpop.Prover
	// AWS is the configuration StartLambda loaded, for a client only one
	// function needs (the refresher's Lambda client for its fan-out).
	AWS aws.Config
}

// New wires the parts. It makes no network calls.
func New(cfg Config, c Clients, log *slog.Logger) (*App, error) {
	var provs Providers
	switch {
	case cfg.StaticProviders != nil:
		provs = registry.NewStatic(cfg.StaticProviders)
	case cfg.SecretPrefix != "":
		if c.SecretsManager == nil {
			return nil, fmt.Errorf("PROVIDER_SECRET_PREFIX set but no Secrets Manager client")
		}
		provs = registry.NewCached(registry.NewSecretsManager(c.SecretsManager, cfg.SecretPrefix), registry.CacheOptions{TTL: cfg.ProviderCacheTTL, Logger: log})
		if !cfg.ListProviderSecrets {
			provs = unlisted{provs}
		}
	case cfg.ProvidersFile != "":
		f, err := registry.LoadFile(cfg.ProvidersFile)
		if err != nil {
			return nil, err
		}
		provs = f
	default:
		return nil, fmt.Errorf("no provider definitions: set PROVIDER_SECRET_PREFIX or PROVIDERS_FILE")
	}
	out := cfg.MetricsOutput
	if out == nil {
		out = os.Stdout
	}
	metrics := obs.NewMetrics(out, cfg.MetricsNamespace)
	var st vend.Store = store.NewMemory(nil)
	if cfg.Table != "" {
		if c.DynamoDB == nil {
			return nil, fmt.Errorf("TOKEN_TABLE set but no DynamoDB client")
		}
		ds := dynamostore.New(c.DynamoDB, cfg.Table)
		ds.OnUndecodable = func(ctx context.Context, pk string, err error) {
			log.WarnContext(ctx, "skipping an undecodable record in the refresh index", "pk", pk, "error", err)
			metrics.Count("", "UndecodableRecords", 1)
		}
		st = ds
	}
	var sealer vend.Sealer
	if cfg.KMSKeyID != "" {
		if c.KMS == nil {
			return nil, fmt.Errorf("TOKEN_KMS_KEY_ID set but no KMS client")
		}
		sealer = envelope.New(c.KMS, cfg.KMSKeyID)
	}
	var signer assertion.KMS // private_key_jwt with kms_key_id; PEM keys need none
	if c.KMS != nil {
		signer = c.KMS
	}
	keys := assertion.New(signer)
	prover := dpop.New(keys)
	up := &upstream.Client{
		Assertions:      keys,
		DPoP:            prover,
		WebIdentity:     webidentity.New(c.STS),
		HTTP:            &http.Client{Transport: transport()},
		AttemptTimeout:  cfg.UpstreamTimeout,
		MaxAttempts:     cfg.UpstreamAttempts,
		MaxRetryAfter:   -1, // a Retry-After becomes a fleet-wide cooldown instead of a wait
		MaxCacheSeconds: cfg.MaxCacheSeconds,
		UserAgent:       "token-vendor/1",
	}
	v := vend.New(provs, up, st, vend.Options{
		DefaultMinTTL:       cfg.DefaultMinTTL,
		L1MaxAge:            cfg.L1MaxAge,
		IdleAfter:           cfg.IdleAfter,
		RefreshParallel:     cfg.RefreshParallel,
		LeaseDuration:       cfg.UpstreamTimeout*time.Duration(cfg.UpstreamAttempts) + cfg.LeaseMargin,
		DisableRefreshAhead: !cfg.RefreshAhead,
		Sealer:              sealer,
		Logger:              log,
		Observer:            metrics,
	})
	g := gate.New(v, provs, log, metrics).WithPolicy(cfg.Policy()).WithProver(dpop.NewPool(prover))
	h := httpapi.New(g, provs, log, nil).WithJWKS(keys)
	if cfg.CursorKeySecret != "" {
		if c.SecretsManager == nil {
			return nil, fmt.Errorf("CURSOR_KEY_SECRET_ARN set but no Secrets Manager client")
		}
		h.WithCursorKey(func(ctx context.Context) ([]byte, error) {
			out, err := c.SecretsManager.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(cfg.CursorKeySecret)})
			if err != nil {
				return nil, err
			}
			return []byte(aws.ToString(out.SecretString)), nil
		})
	}
	a := &App{Config: cfg, Vendor: v, Gate: g, Providers: provs, Handler: h, Log: log, Metrics: metrics, Keys: keys, DPoP: prover}
	if (cfg.VendorID != "" || cfg.FunctionName != "") && cfg.STSEndpoint != "" {
		a.Proofs = &identity.Verifier{Endpoint: cfg.STSEndpoint, VendorID: cfg.VendorID}
	}
	return a, nil
}

// unlisted is a provider source whose listing is turned off.
type unlisted struct{ Providers }

func (unlisted) Names(context.Context) ([]string, error) { return nil, registry.ErrListingOff }

// transport is tuned for a few upstream hosts called often.
func transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 16
	t.IdleConnTimeout = 90 * time.Second
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return t
}

// StartLambda is a function's whole main: environment into config, AWS
// config loaded once, parts wired, and handler(app) started. Set-up failure
// is logged and exits 1; nothing on the request path panics or exits.
func StartLambda(handler func(*App) any) {
	cfg, err := FromEnv(os.Getenv)
	// Lambda freezes the process when the handler returns: nothing may be
	// left running after the response.
	cfg.RefreshAhead = false
	log := obs.NewLogger(os.Stdout, cfg.LogLevel)
	if err != nil {
		log.Error("bad configuration", "error", err)
		os.Exit(1)
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(context.Background())
	if err != nil {
		log.Error("cannot load AWS configuration", "error", err)
		os.Exit(1)
	}
	a, err := New(cfg, AWSClients(awsCfg), log)
	if err != nil {
		log.Error("cannot start", "error", err)
		os.Exit(1)
	}
	a.AWS = awsCfg
	lambda.Start(handler(a))
}

// usageFlushBudget bounds the usage writes an invocation makes before it
// returns (one PutItem each, in parallel batches).
const usageFlushBudget = time.Second

// flushMargin is how long before the invocation's deadline the usage flush
// stops: the response still has to reach the Runtime API, and a handler
// that returns past its deadline has its result thrown away.
const flushMargin = 200 * time.Millisecond

// Flushing wraps a Lambda handler so the usage writes queued and the metrics
// recorded during an invocation are written before it returns (Lambda may
// freeze the process right after). The usage writes get at most a second,
// and stop flushMargin before the invocation's deadline.
func Flushing[E, R any](a *App, h func(context.Context, E) (R, error)) func(context.Context, E) (R, error) {
	return func(ctx context.Context, e E) (R, error) {
		r, err := h(ctx, e)
		// Queued usage writes go now, inside the invocation: nothing runs
		// after it, and this instance may never read the table again.
		// At most usageFlushBudget, and never past the invocation's deadline
		// (less flushMargin): a write cut there is dropped, and a later read
		// notices the stale usage again.
		end := time.Now().Add(usageFlushBudget)
		if dl, ok := ctx.Deadline(); ok && dl.Add(-flushMargin).Before(end) {
			end = dl.Add(-flushMargin)
		}
		if time.Until(end) > 0 {
			uctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), end)
			a.Vendor.FlushUsage(uctx)
			cancel()
		}
		if ferr := a.Metrics.Flush(); ferr != nil {
			a.Log.WarnContext(ctx, "metrics not written", "error", ferr)
		}
		return r, err
	}
}
