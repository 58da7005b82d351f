// Package extension is a Lambda extension that serves tokens to the
// function it runs beside (any language) on a loopback port, from an
// in-memory cache filled by invoking the vend function with the function's
// own role, so the consumer's IAM permissions are what grant access.
//
// Requests must carry the function's AWS_SESSION_TOKEN in the
// X-Token-Vendor-Session-Token header, as AWS's Parameters and Secrets
// extension requires its own: code tricked into fetching a URL (SSRF)
// cannot read tokens. Tokens are renewed at the start of an invocation, and
// the extension reports the invocation done only after that: nothing runs
// once Lambda freezes the environment.
package extension

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/localcache"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// Header carries the function's AWS_SESSION_TOKEN on every request.
const Header = "X-Token-Vendor-Session-Token"

// DefaultPort is where the extension listens on loopback.
const DefaultPort = 2790

const (
	defaultMinTTL = 60 * time.Second
	maxMinTTL     = 24 * time.Hour
)

// Fetcher asks the vend function for a token (client.LambdaInvoker).
type Fetcher = localcache.Fetcher

// Cache serves tokens from a localcache.Cache (the Go client's and the
// agent's cache too), fetching through the vend function.
type Cache struct {
	cache  *localcache.Cache
	f      Fetcher    // for DPoP proofs, which are never cached (dpop.go)
	pool   *proofPool // DPoP proofs signed ahead (WithProofPool); nil: off
	secret string
	now    func() time.Time
	log    *slog.Logger
}

// renewBudget bounds the renewals at an invocation's start, so a slow
// vendor cannot hold the environment until the invocation's deadline.
const renewBudget = 5 * time.Second

// New returns a cache over f. secret is the function's AWS_SESSION_TOKEN.
func New(f Fetcher, secret string, log *slog.Logger) *Cache {
	return newWith(f, secret, localcache.Options{Log: log})
}

func newWith(f Fetcher, secret string, o localcache.Options) *Cache {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Cache{cache: localcache.New(f, o), f: f, secret: secret, now: o.Now, log: o.Log}
}

// Stats are the cache's counters.
func (c *Cache) Stats() localcache.Stats { return c.cache.Stats() }

// Token returns a cached token with at least minTTL left (capped at half its
// lifetime, as the vendor caps it), or fetches one. Every caller's min_ttl
// is checked against what it receives, joined to another's fetch or not.
func (c *Cache) Token(ctx context.Context, provider, scope string, minTTL time.Duration) (client.Token, time.Time, error) {
	return c.TokenFor(ctx, client.Request{Provider: provider, Scope: scope, MinTTL: minTTL})
}

// TokenFor is Token for a request that may name a target (resource,
// audience); its MinTTL is the caller's min_ttl.
func (c *Cache) TokenFor(ctx context.Context, r client.Request) (client.Token, time.Time, error) {
	return withExpiry(c.cache.Get(ctx, r))
}

// Rejected drops the cached token if its SHA-256 is sum and has the vendor
// replace it; if the cache already holds another token, that is returned.
func (c *Cache) Rejected(ctx context.Context, r client.Request, sum string) (client.Token, time.Time, error) {
	return withExpiry(c.cache.Rejected(ctx, r, sum))
}

func withExpiry(t client.Token, err error) (client.Token, time.Time, error) {
	if err != nil {
		return client.Token{}, time.Time{}, err
	}
	exp, err := time.Parse(time.RFC3339, t.ExpiresAt)
	if err != nil { // the cache keeps only tokens whose expires_at parses
		return client.Token{}, time.Time{}, errors.New("the vend function answered without a usable token")
	}
	return t, exp, nil
}

// RenewDue renews the cached tokens past their refresh point that a caller
// asked for since their last fetch, a few at a time, within renewBudget;
// the extension calls it as an invocation starts and waits for it before
// reporting the invocation done. It returns how many it renewed.
func (c *Cache) RenewDue(ctx context.Context) int {
	ctx, cancel := context.WithTimeout(ctx, renewBudget)
	defer cancel()
	return c.cache.Renew(ctx)
}

var (
	providerRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	sha256RE   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Handler serves GET /v1/tokens/{provider} and POST
// /v1/tokens/{provider}/rejected with the HTTP API's JSON and error contract.
func (c *Cache) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tokens/{provider}", c.get)
	mux.HandleFunc("POST /v1/tokens/{provider}/rejected", c.rejected)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Pragma", "no-cache")
		got := r.Header.Get(Header)
		if c.secret == "" || subtle.ConstantTimeCompare([]byte(got), []byte(c.secret)) != 1 {
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong "+Header+" header (the function's AWS_SESSION_TOKEN)", "", 0)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (c *Cache) get(w http.ResponseWriter, r *http.Request) {
	provider := r.PathValue("provider")
	q, err := wire.Params(r, "scope", "resource", "audience", "min_ttl", "dpop_htm", "dpop_htu", "dpop_nonce")
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", err.Error(), provider, 0)
		return
	}
	if !providerRE.MatchString(provider) {
		writeError(w, http.StatusNotFound, "unknown_provider", fmt.Sprintf("no provider named %q", provider), "", 0)
		return
	}
	if q.Has("dpop_htm") || q.Has("dpop_htu") || q.Has("dpop_nonce") {
		c.proof(w, r, provider, q)
		return
	}
	minTTL := defaultMinTTL
	if v := q.Get("min_ttl"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || n > int64(maxMinTTL/time.Second) {
			writeError(w, http.StatusBadRequest, "invalid_request", fmt.Sprintf("min_ttl must be a whole number of seconds from 0 to %d", int64(maxMinTTL/time.Second)), provider, 0)
			return
		}
		minTTL = time.Duration(n) * time.Second
	}
	tok, exp, err := c.TokenFor(r.Context(), client.Request{Provider: provider, Scope: q.Get("scope"), Resource: q.Get("resource"), Audience: q.Get("audience"), MinTTL: minTTL})
	c.answer(w, r, provider, tok, exp, err)
}

func (c *Cache) rejected(w http.ResponseWriter, r *http.Request) {
	provider := r.PathValue("provider")
	q, err := wire.Params(r, "scope", "resource", "audience")
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", err.Error(), provider, 0)
		return
	}
	var body struct {
		TokenSHA256 string `json:"token_sha256"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || !sha256RE.MatchString(body.TokenSHA256) {
		writeError(w, http.StatusBadRequest, "invalid_request", `body must be {"token_sha256":"<64 lower-case hex digits>"}`, provider, 0)
		return
	}
	if c.pool != nil {
		c.pool.dropProvider(provider) // its proofs may be bound to the rejected token
	}
	tok, exp, err := c.Rejected(r.Context(), client.Request{Provider: provider, Scope: q.Get("scope"), Resource: q.Get("resource"), Audience: q.Get("audience")}, body.TokenSHA256)
	c.answer(w, r, provider, tok, exp, err)
}

func (c *Cache) answer(w http.ResponseWriter, r *http.Request, provider string, tok client.Token, exp time.Time, err error) {
	if err != nil {
		var ve *client.Error
		if errors.As(err, &ve) {
			status, code := wire.ForErrorType(ve.Code)
			writeError(w, status, code, ve.Message, provider, retryAfter(ve.Message))
			return
		}
		c.log.ErrorContext(r.Context(), "cannot reach the vend function", "provider", provider, "error", err)
		writeError(w, http.StatusServiceUnavailable, "upstream_unavailable", "the vend function cannot be invoked right now (see the extension's log)", provider, 5)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(wire.TokenResponse{Provider: tok.Provider, AccessToken: tok.AccessToken, TokenType: tok.TokenType,
		ExpiresIn: int64(math.Floor(exp.Sub(c.now()).Seconds())), ExpiresAt: tok.ExpiresAt, Scope: tok.Scope})
}

// retryAfter reads "(retry_after=Ns)", which the vend function's Lambda
// errors carry (wire.Problem.LambdaError).
func retryAfter(msg string) int64 {
	_, rest, ok := strings.Cut(msg, "(retry_after=")
	if !ok {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSuffix(strings.SplitN(rest, ")", 2)[0], "s"), 10, 64)
	return n
}

func writeError(w http.ResponseWriter, status int, code, desc, provider string, retry int64) {
	w.Header().Set("Content-Type", "application/json")
	if retry > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(retry, 10))
	}
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(wire.ErrorResponse{Error: code, ErrorDescription: desc, Provider: provider})
}
