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
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/token-vendor/token-vendor/pkg/client"
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
type Fetcher interface {
	Fetch(ctx context.Context, req client.Request) (*client.Token, error)
}

// Cache serves tokens from memory, fetching through f once for all
// concurrent callers of a key.
type Cache struct {
	f      Fetcher
	secret string
	now    func() time.Time
	log    *slog.Logger

	mu  sync.Mutex
	got map[string]*entry
	sf  singleflight.Group
}

type entry struct {
	req      client.Request // provider, scope and target; no min_ttl
	tok      client.Token
	expiry   time.Time
	lifetime time.Duration // issue to expiry (the vendor's issued_at), not the time left
	// failures and retryAt pace renewals that fail: not at every
	// invocation, but after a backoff.
	failures int
	retryAt  time.Time
}

// fresh reports whether the entry may be served to a caller asking minTTL:
// as the vendor rules, at least min(minTTL, half the token's lifetime) left.
func (e *entry) fresh(now time.Time, minTTL time.Duration) bool {
	return e.expiry.Sub(now) >= min(minTTL, e.lifetime/2)
}

// Renewal pacing after failures: 10 s, doubling, at most 5 minutes.
const (
	renewBackoff    = 10 * time.Second
	maxRenewBackoff = 5 * time.Minute
	// renewBudget bounds the renewals at an invocation's start, so a slow
	// vendor cannot hold the environment until the invocation's deadline.
	renewBudget = 5 * time.Second
	// fetchTimeout bounds a fetch no caller's deadline bounds.
	fetchTimeout = 15 * time.Second
)

// permanent are the vend function's refusals that renewing again will not
// change: the key is dropped (asked for again, it is fetched again).
var permanent = map[string]bool{"UnknownProvider": true, "ScopeNotAllowed": true, "CallerNotAllowed": true, "KeyLimitReached": true, "InvalidRequest": true}

// refreshAt is when the entry should be renewed ahead of expiry: as the
// vendor renews, max(60 s, lifetime/5) before, never in the first half of
// the token's life.
func (e *entry) refreshAt() time.Time {
	return e.expiry.Add(-min(max(60*time.Second, e.lifetime/5), e.lifetime/2))
}

// New returns a cache over f. secret is the function's AWS_SESSION_TOKEN.
func New(f Fetcher, secret string, log *slog.Logger) *Cache {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Cache{f: f, secret: secret, now: time.Now, log: log, got: map[string]*entry{}}
}

// scopeKey normalizes a scope as the vendor does: split, deduplicated, sorted.
func scopeKey(scope string) string {
	parts := strings.Fields(scope)
	slices.Sort(parts)
	return strings.Join(slices.Compact(parts), " ")
}

func key(r client.Request) string {
	return r.Provider + "\x00" + scopeKey(r.Scope) + "\x00" + scopeKey(r.Resource) + "\x00" + scopeKey(r.Audience)
}

// Token returns a cached token with at least minTTL left (capped at half its
// lifetime, as the vendor caps it), or fetches one. Every caller's min_ttl
// is checked against what it receives, joined to another's fetch or not.
func (c *Cache) Token(ctx context.Context, provider, scope string, minTTL time.Duration) (client.Token, time.Time, error) {
	return c.TokenFor(ctx, client.Request{Provider: provider, Scope: scope, MinTTL: minTTL})
}

// TokenFor is Token for a request that may name a target (resource,
// audience); its MinTTL is the caller's min_ttl.
func (c *Cache) TokenFor(ctx context.Context, r client.Request) (client.Token, time.Time, error) {
	minTTL := r.MinTTL
	k := key(r)
	c.mu.Lock()
	e := c.got[k]
	c.mu.Unlock()
	if e != nil && e.fresh(c.now(), minTTL) {
		return e.tok, e.expiry, nil
	}
	e, err := c.fetch(ctx, k, r)
	if err != nil {
		return client.Token{}, time.Time{}, err
	}
	if !e.fresh(c.now(), minTTL) {
		return client.Token{}, time.Time{}, &client.Error{Code: "UpstreamUnavailable", Message: "no token with min_ttl left could be had (retry_after=1s)"}
	}
	return e.tok, e.expiry, nil
}

// Rejected drops the cached token if its SHA-256 is sum and has the vendor
// replace it; if the cache already holds another token, that is returned.
func (c *Cache) Rejected(ctx context.Context, r client.Request, sum string) (client.Token, time.Time, error) {
	k := key(r)
	c.mu.Lock()
	e := c.got[k]
	if e != nil && tokenSHA(e.tok.AccessToken) != sum && c.now().Before(e.expiry) {
		c.mu.Unlock()
		return e.tok, e.expiry, nil // replaced already
	}
	delete(c.got, k)
	c.mu.Unlock()
	e, err := c.fetch(ctx, k, client.Request{Provider: r.Provider, Scope: r.Scope, Resource: r.Resource, Audience: r.Audience, RejectedSHA256: sum})
	if err != nil {
		return client.Token{}, time.Time{}, err
	}
	return e.tok, e.expiry, nil
}

// fetch asks the vend function once for all concurrent callers of the same
// key and min_ttl. The fetch is detached from the first caller's
// cancellation (the others still want it) but keeps its deadline, or
// fetchTimeout when it has none.
func (c *Cache) fetch(ctx context.Context, k string, req client.Request) (*entry, error) {
	flight := k + "\x00" + req.RejectedSHA256 + "\x00" + strconv.FormatInt(int64(req.MinTTL), 10)
	ch := c.sf.DoChan(flight, func() (any, error) {
		deadline := time.Now().Add(fetchTimeout)
		if dl, ok := ctx.Deadline(); ok {
			deadline = dl
		}
		fctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
		defer cancel()
		t, err := c.f.Fetch(fctx, req)
		if err != nil {
			return nil, err
		}
		exp, err := time.Parse(time.RFC3339, t.ExpiresAt)
		if err != nil || t.AccessToken == "" || t.ExpiresIn <= 0 {
			return nil, errors.New("the vend function answered without a usable token")
		}
		e := &entry{req: client.Request{Provider: req.Provider, Scope: req.Scope, Resource: req.Resource, Audience: req.Audience}, tok: *t, expiry: exp, lifetime: t.Lifetime(exp)}
		c.mu.Lock()
		c.got[k] = e
		c.mu.Unlock()
		return e, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*entry), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// RenewDue renews, concurrently, every cached token past its refresh point;
// the extension calls it as an invocation starts and waits for it before
// reporting the invocation done. It returns how many it renewed.
func (c *Cache) RenewDue(ctx context.Context) int {
	ctx, cancel := context.WithTimeout(ctx, renewBudget)
	defer cancel()
	now := c.now()
	c.mu.Lock()
	var due []*entry
	for _, e := range c.got {
		if !now.Before(e.refreshAt()) && !now.Before(e.retryAt) {
			due = append(due, e)
		}
	}
	c.mu.Unlock()
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		n  int
	)
	for _, e := range due {
		wg.Go(func() {
			// Asking with min_ttl above what is left makes the vendor
			// return a newer token than this one.
			left := e.expiry.Sub(now)
			k := key(e.req)
			r := e.req
			r.MinTTL = max(left, 0) + time.Second
			if _, err := c.fetch(ctx, k, r); err != nil {
				c.renewalFailed(ctx, k, e, now, err)
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
		})
	}
	wg.Wait()
	return n
}

// renewalFailed drops a key the vendor refuses for good (or whose token has
// expired), and otherwise paces the next attempt.
func (c *Cache) renewalFailed(ctx context.Context, k string, e *entry, now time.Time, err error) {
	var ve *client.Error
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur := c.got[k]; cur != e {
		return // replaced meanwhile
	}
	if (errors.As(err, &ve) && permanent[ve.Code]) || !now.Before(e.expiry) {
		delete(c.got, k)
		c.log.WarnContext(ctx, "renewal failed; the key is dropped until asked for again", "provider", e.req.Provider, "error", err)
		return
	}
	e.failures++
	e.retryAt = now.Add(min(renewBackoff<<min(e.failures-1, 10), maxRenewBackoff))
	c.log.WarnContext(ctx, "renewal ahead of expiry failed; the cached token is served while it lasts", "provider", e.req.Provider,
		"error", err, "retry_in_s", e.retryAt.Sub(now).Seconds())
}

func tokenSHA(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
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
