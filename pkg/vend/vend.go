// Package vend is the vending core (docs/design.md §3): it hands out access tokens
// from an in-process cache (L1) and a shared store (L2), and makes sure that
// across every process sharing the store there is one upstream request per
// key per refresh. It never vends a token with less than the caller's min_ttl
// left, keeps vending a still-valid token while the provider fails, and keeps
// vending (rate-limited) when the store fails.
package vend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
)

// ProviderSource yields provider definitions.
type ProviderSource interface {
	Get(ctx context.Context, name string) (*provider.Definition, error)
	// Reload bypasses any cache; called once when a provider refuses the
	// client's credentials, in case the secret was rotated.
	Reload(ctx context.Context, name string) (*provider.Definition, error)
}

// Fetcher talks to authorization servers (upstream.Client in production).
type Fetcher interface {
	Fetch(ctx context.Context, def *provider.Definition, key provider.Key) (*upstream.Token, error)
	Revoke(ctx context.Context, def *provider.Definition, token string) error
}

// Store is the shared cache (store.Memory or dynamostore.Store).
type Store interface {
	Get(ctx context.Context, pk string, consistent bool) (*store.Item, error)
	Put(ctx context.Context, it *store.Item, expect int64) error
	// ScanPage is one bounded page of the table, for listings.
	ScanPage(ctx context.Context, f store.Filter, after string, limit int) ([]*store.Item, string, error)
	// Due lists, from the refresh index (eventually consistent, projected:
	// no token), the records holding a token due before before.
	Due(ctx context.Context, before time.Time, shards []int) ([]*store.Item, error)
}

// Sealer encrypts tokens at rest (envelope.Sealer).
type Sealer interface {
	// ec is the KMS encryption context; bound are the record fields the
	// seal also authenticates (SealedRecordFields). Open's errors wrapping
	// envelope.ErrRefused say the blob is not a token sealed for this
	// record; any other error is an outage (KMS throttled or unreachable).
	Seal(ctx context.Context, plaintext []byte, ec, bound map[string]string) ([]byte, error)
	Open(ctx context.Context, blob []byte, ec, bound map[string]string) ([]byte, error)
}

// Source says where a vended token came from.
type Source string

const (
	FromL1       Source = "l1"
	FromL2       Source = "l2"
	FromUpstream Source = "upstream"
)

// Token is a vended token.
type Token struct {
	Provider    string
	AccessToken string
	TokenType   string
	// JKT is the DPoP key's thumbprint for a DPoP-bound token (TokenType
	// DPoP), else "".
	JKT       string
	Scope     string
	ExpiresAt time.Time
	Source    Source

	lifetime time.Duration // issued_at to expiry, for the min_ttl cap
}

// Lifetime is the token's whole life (issue to expiry), which a client
// needs to apply min_ttl's cap as the vendor does; 0 when unknown.
func (t Token) Lifetime() time.Duration { return t.lifetime }

// Request asks for a token.
type Request struct {
	Provider string
	// Scope is space-separated, as the caller sent it; empty means the
	// provider's default scopes.
	Scope string
	// Resource and Audience (space-separated; RFC 8707 resource
	// indicators, audiences) name the token's target; empty means the
	// provider's defaults. They are part of the cache key.
	Resource, Audience string
	// MinTTL is the least lifetime the token must have left; negative means
	// the default (60 s). It is capped at half the token's lifetime.
	MinTTL time.Duration
}

// MaxMinTTL bounds Request.MinTTL.
const MaxMinTTL = 24 * time.Hour

// Options tune the core. Zero values take the defaults noted.
type Options struct {
	DefaultMinTTL time.Duration // 60 s
	// L1MaxAge bounds how long an in-process entry is used (15 s), and so how
	// long a warm instance can vend a token revoked elsewhere. Negative disables L1.
	L1MaxAge time.Duration
	// LeaseDuration covers the upstream timeout times the attempts plus a
	// margin (5 s × 3 + 10 s = 25 s).
	LeaseDuration       time.Duration
	PermanentErrorTTL   time.Duration // 30 s
	RejectInterval      time.Duration // 30 s
	RateLimitCooldown   time.Duration // 30 s, for a 429 without Retry-After
	ServerErrorCooldown time.Duration // 10 s, after repeated 5xx
	// RefreshJitter lets the scheduled refresher renew a key up to this much
	// earlier than needed, by a per-key amount, so keys spread over runs (30 s).
	RefreshJitter time.Duration
	// FallbackRate and FallbackBurst limit upstream requests per instance
	// while the store is unavailable (1/s, burst 3).
	FallbackRate  rate.Limit
	FallbackBurst int
	// StoreRetryAfter is how long, after the store failed, calls skip it and
	// vend from the fallback at once instead of each paying the SDK's
	// retries against a dead endpoint (5 s). The next call after it tries again.
	StoreRetryAfter time.Duration
	// IdleAfter: the refresher stops renewing a key nobody vended for this
	// long (24 h); a provider's idle_after_seconds overrides it.
	IdleAfter time.Duration
	// RefreshParallel is a refresher run's default concurrency
	// (DefaultRefreshParallel); RefreshOptions.Parallel overrides it.
	RefreshParallel int
	// DisableRefreshAhead stops the background renewal a caller triggers
	// when it finds a token past refresh_at (the scheduled refresher still runs).
	DisableRefreshAhead bool
	Sealer              Sealer
	Logger              *slog.Logger
	Observer            Observer
	Now                 func() time.Time
	Sleep               func(ctx context.Context, d time.Duration) error
	// InstanceID names this process in leases (random if empty).
	InstanceID string
}

// Observer receives events for metrics. Implementations must not block.
type Observer interface {
	Vended(provider string, src Source, lifeLeft time.Duration)
	Upstream(provider string, latency time.Duration, errCode string)
	Event(provider, name string)
	// Value records one sample of a distribution (a metric with a unit).
	Value(provider, metric, unit string, v float64)
}

type nopObserver struct{}

func (nopObserver) Vended(string, Source, time.Duration)   {}
func (nopObserver) Upstream(string, time.Duration, string) {}
func (nopObserver) Event(string, string)                   {}
func (nopObserver) Value(string, string, string, float64)  {}

// Vendor vends tokens. It is safe for concurrent use.
type Vendor struct {
	providers ProviderSource
	fetcher   Fetcher
	store     Store
	opts      Options
	log       *slog.Logger
	obs       Observer
	l1        *l1Cache
	sf        singleflight.Group
	fallback  *rate.Limiter
	seq       atomic.Uint64
	uses      usages
	// certWarned: provider -> when its expiring certificate was last reported.
	certWarned sync.Map
	// storeDownUntil (wall-clock UnixNano) opens the store circuit breaker.
	storeDownUntil atomic.Int64
}

// New builds a Vendor.
func New(src ProviderSource, f Fetcher, st Store, o Options) *Vendor {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.DefaultMinTTL, 60*time.Second)
	def(&o.L1MaxAge, 15*time.Second)
	def(&o.LeaseDuration, 25*time.Second)
	def(&o.PermanentErrorTTL, 30*time.Second)
	def(&o.RejectInterval, 30*time.Second)
	def(&o.RateLimitCooldown, 30*time.Second)
	def(&o.ServerErrorCooldown, 10*time.Second)
	def(&o.RefreshJitter, 30*time.Second)
	def(&o.StoreRetryAfter, 5*time.Second)
	def(&o.IdleAfter, 24*time.Hour)
	if o.FallbackRate == 0 {
		o.FallbackRate = 1
	}
	if o.FallbackBurst == 0 {
		o.FallbackBurst = 3
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = sleepCtx
	}
	if o.InstanceID == "" {
		o.InstanceID = randomID()
	}
	v := &Vendor{providers: src, fetcher: f, store: st, opts: o, log: o.Logger, obs: o.Observer, l1: newL1()}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.obs == nil {
		v.obs = nopObserver{}
	}
	v.fallback = rate.NewLimiter(o.FallbackRate, o.FallbackBurst)
	return v
}

// Token vends a token for req: from L1, from the store, or from the provider
// under the fleet-wide lease.
func (v *Vendor) Token(ctx context.Context, req Request) (Token, error) {
	def, minTTL, err := v.prepare(ctx, req)
	if err != nil {
		return Token{}, err
	}
	now := v.opts.Now()
	if v.opts.L1MaxAge > 0 {
		if t, ok := v.l1.get(def, req.l1Key(), now, minTTL, v.opts.L1MaxAge); ok {
			v.obs.Vended(def.Name, FromL1, t.ExpiresAt.Sub(now))
			return t, nil
		}
	}
	return v.withDefinition(ctx, def, req, func(def *provider.Definition, key provider.Key) *job {
		return &job{def: def, key: key, minTTL: minTTL, mode: modeGet}
	})
}

// Refresh fetches a new token now and replaces the cached one.
func (v *Vendor) Refresh(ctx context.Context, req Request) (Token, error) {
	def, minTTL, err := v.prepare(ctx, req)
	if err != nil {
		return Token{}, err
	}
	since := v.opts.Now()
	return v.withDefinition(ctx, def, req, func(def *provider.Definition, key provider.Key) *job {
		return &job{def: def, key: key, minTTL: minTTL, mode: modeForce, since: since}
	})
}

// Rejected handles a token the resource server refused: if rejectedSHA256
// (hex) is still the cached token it is dropped and one new token is fetched
// (at most once per key per RejectInterval); if the cache already holds
// another token, that one is returned without an upstream call.
func (v *Vendor) Rejected(ctx context.Context, req Request, rejectedSHA256 string) (Token, error) {
	sum, err := ParseSHA256(rejectedSHA256)
	if err != nil {
		return Token{}, err
	}
	def, minTTL, err := v.prepare(ctx, req)
	if err != nil {
		return Token{}, err
	}
	v.l1.purgeToken(sum)
	return v.withDefinition(ctx, def, req, func(def *provider.Definition, key provider.Key) *job {
		return &job{def: def, key: key, minTTL: minTTL, mode: modeRejected, rejected: sum}
	})
}

// ErrInvalidRequest is wrapped by errors about the caller's input.
var ErrInvalidRequest = errors.New("invalid request")

// ParseSHA256 checks a hex SHA-256 and returns it in lower case.
func ParseSHA256(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) != 64 {
		return "", fmt.Errorf("%w: token_sha256 must be 64 hex characters", ErrInvalidRequest)
	}
	if _, err := hex.DecodeString(s); err != nil {
		return "", fmt.Errorf("%w: token_sha256 must be 64 hex characters", ErrInvalidRequest)
	}
	return s, nil
}

// prepare validates the request's min_ttl and reads the provider definition.
func (v *Vendor) prepare(ctx context.Context, req Request) (*provider.Definition, time.Duration, error) {
	minTTL, err := v.minTTL(req.MinTTL)
	if err != nil {
		return nil, 0, err
	}
	def, err := v.providers.Get(ctx, req.Provider)
	return def, minTTL, err
}

func (v *Vendor) minTTL(d time.Duration) (time.Duration, error) {
	if d < 0 {
		return v.opts.DefaultMinTTL, nil
	}
	if d > MaxMinTTL {
		return 0, fmt.Errorf("%w: min_ttl must be between 0 and %d seconds", ErrInvalidRequest, int(MaxMinTTL.Seconds()))
	}
	return d, nil
}

// resolve checks the scope and target against the definition and builds
// the key.
func resolve(def *provider.Definition, req Request) (provider.Key, error) {
	scopes, err := def.Resolve(req.Scope)
	var target provider.Target
	if err == nil {
		target, err = def.ResolveTarget(req.Resource, req.Audience)
	}
	if errors.Is(err, provider.ErrBadScope) {
		return provider.Key{}, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if err != nil {
		return provider.Key{}, err
	}
	return def.KeyForTarget(scopes, target), nil
}

// l1Key is the request as the caller wrote it: L1 is keyed by it, so a hit
// needs no parsing. It is looked up before the request is validated, so it
// must be injective: a scope holding the separator must not spell another
// request's target (the lengths say where each field ends).
func (r Request) l1Key() string {
	if r.Resource == "" && r.Audience == "" && !strings.Contains(r.Scope, "\x00") {
		return r.Scope
	}
	return strconv.Itoa(len(r.Scope)) + "\x00" + r.Scope + strconv.Itoa(len(r.Resource)) + "\x00" + r.Resource + r.Audience
}

// withDefinition runs a job, and runs it once more with a re-read definition
// when a credential rotation changed the registration (client id) under it.
func (v *Vendor) withDefinition(ctx context.Context, def *provider.Definition, req Request, mk func(*provider.Definition, provider.Key) *job) (Token, error) {
	for attempt := 0; ; attempt++ {
		key, err := resolve(def, req)
		if err != nil {
			return Token{}, err
		}
		t, err := v.shared(ctx, mk(def, key))
		if errors.Is(err, errRegistrationChanged) && attempt == 0 {
			if def, err = v.providers.Get(ctx, req.Provider); err != nil {
				return Token{}, err
			}
			continue
		}
		if err == nil && v.opts.L1MaxAge > 0 {
			v.l1.put(def, req.l1Key(), key.PK, t, v.opts.Now())
		}
		if err == nil {
			v.obs.Vended(def.Name, t.Source, t.ExpiresAt.Sub(v.opts.Now()))
		} else {
			v.noteFailure(def.Name, err)
		}
		return t, err
	}
}

// noteFailure counts what callers are refused with, for the alarms.
func (v *Vendor) noteFailure(provider string, err error) {
	if re, ok := upstream.AsRetrieveError(err); ok && re.Kind == upstream.Permanent {
		v.obs.Event(provider, "upstream_rejected")
	} else if _, ok := IsUnavailable(err); ok {
		v.obs.Event(provider, "unavailable")
	}
}

// UnavailableError means no usable token could be had now; try after RetryAfter.
type UnavailableError struct {
	Provider   string
	Reason     string
	RetryAfter time.Duration
	Err        error
}

func (e *UnavailableError) Error() string {
	msg := fmt.Sprintf("provider %s: no usable token: %s", e.Provider, e.Reason)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *UnavailableError) Unwrap() error { return e.Err }

var (
	errRegistrationChanged = errors.New("provider registration changed during the fetch")
	errSkipped             = errors.New("renewal not needed or already under way")
	// errRunCut: the caller's (the refresher run's) own deadline ended the
	// work, not the provider or the store.
	errRunCut = errors.New("cut short by the caller's deadline")
)

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
