// Package localcache is the token cache a consumer keeps in its own
// process, shared by the Lambda extension (pkg/extension), the Go client
// (pkg/client) and the container agent, so a rule fixed once holds for
// all of them (docs/design.md §5, "The local cache"):
//
//   - a token is served with at least min(min_ttl, half its lifetime) left,
//     the lifetime from the vendor's issued_at, checked for every caller,
//     joined to another's fetch or not, and min_ttl is sent to the vendor;
//   - concurrent callers of a key share one fetch, which runs on its own
//     bounded context: one caller giving up fails nobody else;
//   - renewals ahead of expiry (Renew) run a bounded number at a time, and
//     only for keys a caller asked for since the last fetch: a renewal is
//     not a use, so a key nobody asks for is left to expire and dropped,
//     and the vendor's idle retirement sees the consumer's real use;
//   - at most MaxEntries keys are held, the least recently used evicted
//     beyond that (counted in Stats, logged without any token).
//
// Renew runs only when called: the extension calls it as each invocation
// starts (Lambda freezes the process between invocations), a long-running
// consumer on a timer:
//
//	c := localcache.New(client.NewLambdaInvokerFromConfig(cfg, vendFunction), localcache.Options{})
//	go func() {
//		for range time.Tick(30 * time.Second) {
//			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
//			c.Renew(ctx)
//			cancel()
//		}
//	}()
//	tok, err := c.Get(ctx, localcache.Request{Provider: "kopokopo", MinTTL: time.Minute})
package localcache

import (
	"cmp"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"
)

// Defaults for the zero Options.
const (
	DefaultMaxEntries       = 1000
	DefaultIdleAfter        = time.Hour
	DefaultRenewConcurrency = 4
	DefaultFetchTimeout     = 15 * time.Second
	// DefaultMinTTL is the vendor's min_ttl when a request sends none
	// (MinTTL 0 or negative): the cache judges such a request by it too.
	DefaultMinTTL = 60 * time.Second
)

// minTTL is what r asks for as the vendor reads it.
func minTTL(r Request) time.Duration {
	if r.MinTTL <= 0 {
		return DefaultMinTTL
	}
	return r.MinTTL
}

// Renewal pacing after failures: 10 s, doubling, at most 5 minutes.
const (
	renewBackoff    = 10 * time.Second
	maxRenewBackoff = 5 * time.Minute
	maxMinTTL       = 24 * time.Hour // the most the vendor accepts
)

// Options tune a Cache; the zero value is usable.
type Options struct {
	// Now is the clock (time.Now).
	Now func() time.Time
	// MaxEntries bounds the keys held; beyond it the least recently
	// used is evicted (DefaultMaxEntries).
	MaxEntries int
	// IdleAfter drops a key nobody asked for this long, even if its token
	// is still valid (DefaultIdleAfter).
	IdleAfter time.Duration
	// RenewConcurrency bounds the fetches Renew runs at once
	// (DefaultRenewConcurrency).
	RenewConcurrency int
	// FetchTimeout bounds a fetch for callers: it is detached from each
	// caller's context, so it needs its own bound (DefaultFetchTimeout).
	FetchTimeout time.Duration
	// Log receives renewal failures and evictions (never a token).
	Log *slog.Logger
}

// Stats counts what the cache did since it was made.
type Stats struct {
	Hits            int64 // Gets served from the cache
	Fetches         int64 // fetches for callers (Get and Rejected)
	Renewals        int64 // renewals that succeeded
	RenewalFailures int64
	Evictions       int64 // keys evicted by the MaxEntries bound
	Dropped         int64 // keys dropped: expired, idle, or refused for good on renewal
	Entries         int   // keys held now
}

// Cache holds tokens per Key. Safe for concurrent use.
type Cache struct {
	f   Fetcher
	o   Options
	now func() time.Time
	log *slog.Logger
	sf  singleflight.Group

	mu      sync.Mutex
	entries map[string]*entry
	lru     list.List // of *entry, most recently used first
	stats   Stats
}

type entry struct {
	key      string
	req      Request // provider, scope and target; no MinTTL or RejectedSHA256
	tok      Token
	expiry   time.Time
	lifetime time.Duration // issue to expiry (the vendor's issued_at), not the time left
	elem     *list.Element
	// lastUsed is when a caller last asked for the key; used says a caller
	// asked since the token was fetched (a renewal clears it).
	lastUsed time.Time
	used     bool
	// failures and retryAt pace renewals that fail.
	failures int
	retryAt  time.Time
}

// fresh reports whether the entry may be served to a caller asking minTTL:
// as the vendor rules, at least min(minTTL, half the token's lifetime) left.
func (e *entry) fresh(now time.Time, minTTL time.Duration) bool {
	return e.expiry.Sub(now) >= min(minTTL, e.lifetime/2)
}

// refreshAt is when the entry is due for renewal: as the vendor renews,
// max(60 s, lifetime/5) before expiry, never in the first half of the life.
func (e *entry) refreshAt() time.Time {
	return e.expiry.Add(-min(max(60*time.Second, e.lifetime/5), e.lifetime/2))
}

// served is the token as handed to a caller at now: expires_in is the
// time left now, not at the fetch.
func (e *entry) served(now time.Time) Token {
	t := e.tok
	t.ExpiresIn = int64(math.Floor(e.expiry.Sub(now).Seconds()))
	return t
}

// New returns a cache fetching through f.
func New(f Fetcher, o Options) *Cache {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.IdleAfter <= 0 {
		o.IdleAfter = DefaultIdleAfter
	}
	if o.RenewConcurrency <= 0 {
		o.RenewConcurrency = DefaultRenewConcurrency
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = DefaultFetchTimeout
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Cache{f: f, o: o, now: o.Now, log: o.Log, entries: map[string]*entry{}}
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = len(c.entries)
	return s
}

// base is the request a fetch sends: normalized, so every caller joined to
// it asks what its key names, whichever spelling came first.
func base(r Request) Request { return normalized(r) }

// errNoFresh is the refusal when the vendor answered with a token below
// the caller's min_ttl.
func errNoFresh() error {
	return &Error{Code: "UpstreamUnavailable", Message: "no token with min_ttl left could be had (retry_after=1s)", RetryAfter: time.Second}
}

// Get returns a token for r with at least r.MinTTL (none: DefaultMinTTL) left (capped at half the
// token's lifetime, as the vendor caps it), cached or fetched once for all
// concurrent callers with the same min_ttl; r.MinTTL is sent to the vendor.
// Get returns when ctx ends even if the fetch goes on for others.
// RejectedSHA256 is ignored: see Rejected. The token's ExpiresIn is the
// time left now.
func (c *Cache) Get(ctx context.Context, r Request) (Token, error) {
	k := Key(r)
	now := c.now()
	c.mu.Lock()
	if e := c.entries[k]; e != nil && e.fresh(now, minTTL(r)) {
		c.touch(e, now)
		c.stats.Hits++
		c.mu.Unlock()
		return e.served(now), nil
	}
	c.mu.Unlock()
	req := base(r)
	req.MinTTL = r.MinTTL
	e, err := c.fetch(ctx, k, req)
	if err != nil {
		return Token{}, err
	}
	now = c.now()
	if !e.fresh(now, minTTL(r)) {
		return Token{}, errNoFresh()
	}
	c.mu.Lock()
	c.touch(e, now)
	c.mu.Unlock()
	return e.served(now), nil
}

// Rejected reports the token whose SHA-256 (hex) is sum as refused by a
// resource server: it is dropped if cached and the vendor asked to replace
// it; if the cache already holds another token (replaced by an earlier
// report) with r's min_ttl left, that is returned without asking the vendor.
func (c *Cache) Rejected(ctx context.Context, r Request, sum string) (Token, error) {
	k := Key(r)
	now := c.now()
	c.mu.Lock()
	if e := c.entries[k]; e != nil && TokenSHA256(e.tok.AccessToken) != sum && e.fresh(now, minTTL(r)) {
		c.touch(e, now)
		c.stats.Hits++
		c.mu.Unlock()
		return e.served(now), nil
	}
	c.remove(k)
	c.mu.Unlock()
	req := base(r)
	req.RejectedSHA256 = sum
	e, err := c.fetch(ctx, k, req)
	if err != nil {
		return Token{}, err
	}
	now = c.now()
	c.mu.Lock()
	c.touch(e, now)
	c.mu.Unlock()
	return e.served(now), nil
}

// TokenSHA256 is the hex SHA-256 of an access token, as Rejected and the
// vendor's rejected route take it.
func TokenSHA256(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// fetch asks the vendor once for all concurrent callers of the same key,
// min_ttl and rejected token. The fetch runs detached from every caller's
// cancellation (the callers joined to it still want it) on its own
// FetchTimeout; each caller stops waiting when its own ctx ends.
func (c *Cache) fetch(ctx context.Context, k string, req Request) (*entry, error) {
	flight := k + "\x00" + req.RejectedSHA256 + "\x00" + strconv.FormatInt(int64(req.MinTTL), 10)
	ch := c.sf.DoChan(flight, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.FetchTimeout)
		defer cancel()
		e, err := c.fetchEntry(fctx, k, req)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.stats.Fetches++
		e = c.store(e, time.Time{})
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

func (c *Cache) fetchEntry(ctx context.Context, k string, req Request) (*entry, error) {
	t, err := c.f.Fetch(ctx, req)
	if err != nil {
		return nil, err
	}
	if t == nil || t.AccessToken == "" || t.ExpiresIn <= 0 {
		return nil, errors.New("token vendor: answered without a usable token")
	}
	exp, err := time.Parse(time.RFC3339, t.ExpiresAt)
	if err != nil {
		return nil, errors.New("token vendor: answered with a malformed expires_at")
	}
	return &entry{key: k, req: base(req), tok: *t, expiry: exp, lifetime: t.Lifetime(exp)}, nil
}

// store installs e under its key and returns what the key now holds: a
// token never replaces a newer one. renewalStarted is zero for a fetch a
// caller caused; for a renewal, the new entry counts as used only if a
// caller asked after the renewal started (a renewal is not a use).
func (c *Cache) store(e *entry, renewalStarted time.Time) *entry {
	old := c.entries[e.key]
	if old == nil && !renewalStarted.IsZero() {
		return e // dropped while it was renewed: not a use either
	}
	if old != nil {
		e.lastUsed = old.lastUsed
		if !renewalStarted.IsZero() {
			e.used = old.lastUsed.After(renewalStarted)
		}
		if old.expiry.After(e.expiry) {
			return old
		}
		c.lru.Remove(old.elem)
	}
	if renewalStarted.IsZero() {
		e.lastUsed = c.now()
	}
	e.elem = c.lru.PushFront(e)
	c.entries[e.key] = e
	if len(c.entries) > c.o.MaxEntries {
		c.sweep(c.now())
	}
	for len(c.entries) > c.o.MaxEntries {
		victim := c.lru.Back().Value.(*entry)
		c.remove(victim.key)
		c.stats.Evictions++
		c.log.Info("local token cache full; least recently used key evicted", "provider", victim.req.Provider,
			"max_entries", c.o.MaxEntries, "evictions", c.stats.Evictions)
	}
	return e
}

// touch records a caller's use of e.
func (c *Cache) touch(e *entry, now time.Time) {
	e.used = true
	e.lastUsed = now
	if c.entries[e.key] == e {
		c.lru.MoveToFront(e.elem)
	}
}

func (c *Cache) remove(k string) {
	if e := c.entries[k]; e != nil {
		c.lru.Remove(e.elem)
		delete(c.entries, k)
	}
}

// sweep drops keys whose token expired and keys nobody asked for in
// IdleAfter.
func (c *Cache) sweep(now time.Time) {
	for k, e := range c.entries {
		if !now.Before(e.expiry) || now.Sub(e.lastUsed) >= c.o.IdleAfter {
			c.remove(k)
			c.stats.Dropped++
		}
	}
}

// Renew renews the keys due: past their refresh point, asked for by a
// caller since their token was fetched, and not backing off after a failed
// renewal; at most RenewConcurrency at a time, those expiring first first,
// until ctx ends. Expired and idle keys are dropped first. It returns
// after every renewal it started has ended (nothing runs on after it, as
// Lambda may freeze the process then), and how many it renewed.
func (c *Cache) Renew(ctx context.Context) int {
	now := c.now()
	c.mu.Lock()
	c.sweep(now)
	var due []*entry
	for _, e := range c.entries {
		if e.used && !now.Before(e.refreshAt()) && !now.Before(e.retryAt) {
			due = append(due, e)
		}
	}
	c.mu.Unlock()
	slices.SortFunc(due, func(a, b *entry) int { return cmp.Compare(a.expiry.UnixNano(), b.expiry.UnixNano()) })
	var (
		g  errgroup.Group
		mu sync.Mutex
		n  int
	)
	g.SetLimit(c.o.RenewConcurrency)
	for _, e := range due {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			if c.renew(ctx, e, now) {
				mu.Lock()
				n++
				mu.Unlock()
			}
			return nil
		})
	}
	g.Wait()
	return n
}

// renew fetches a newer token for e on ctx (not detached: Renew's caller
// bounds it).
func (c *Cache) renew(ctx context.Context, e *entry, now time.Time) bool {
	if ctx.Err() != nil {
		return false // out of time before it started: not a failure
	}
	// Asking with min_ttl above what is left makes the vendor return a
	// newer token than this one.
	req := e.req
	req.MinTTL = min(max(e.expiry.Sub(now), 0)+time.Second, maxMinTTL)
	// Joined to another Renew's renewal, this one shares its context: cut
	// by that caller's deadline, it tries once more on its own.
	var (
		v      any
		err    error
		shared bool
	)
	for attempt := 0; attempt < 2; attempt++ {
		v, err, shared = c.sf.Do("renew\x00"+e.key, func() (any, error) {
			return c.fetchEntry(ctx, e.key, req)
		})
		if err == nil || !shared || ctx.Err() != nil || !isContextErr(err) {
			break
		}
	}
	if err != nil && (ctx.Err() != nil || (shared && isContextErr(err))) {
		return false // cut by a Renew's deadline: nothing says the vendor failed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.renewalFailed(ctx, e, now, err)
		return false
	}
	c.stats.Renewals++
	c.store(v.(*entry), now)
	return true
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// renewalFailed drops a key the vendor refuses for good (or whose token
// has expired), and otherwise paces the next attempt. c.mu is held.
func (c *Cache) renewalFailed(ctx context.Context, e *entry, now time.Time, err error) {
	c.stats.RenewalFailures++
	if c.entries[e.key] != e {
		return // replaced meanwhile
	}
	var ve *Error
	if (errors.As(err, &ve) && permanent[ve.Code]) || !now.Before(e.expiry) {
		c.remove(e.key)
		c.stats.Dropped++
		c.log.WarnContext(ctx, "renewal failed; the key is dropped until asked for again", "provider", e.req.Provider, "error", err)
		return
	}
	e.failures++
	e.retryAt = now.Add(min(renewBackoff<<min(e.failures-1, 10), maxRenewBackoff))
	c.log.WarnContext(ctx, "renewal ahead of expiry failed; the cached token is served while it lasts", "provider", e.req.Provider,
		"error", err, "retry_in_s", e.retryAt.Sub(now).Seconds())
}
