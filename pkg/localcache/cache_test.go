package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// vend answers like the vendor on a clock the test moves: every token has
// lifetime life and was issued issuedAgo before the answer, and the
// vendor honours min_ttl by fetching a newer token. gate, when set, holds
// fetches until closed or their ctx ends.
type vend struct {
	mu          sync.Mutex
	now         time.Time
	life        time.Duration
	issuedAgo   time.Duration
	err         error
	gate        chan struct{}
	delay       time.Duration
	reqs        []Request
	per         map[string]int
	calls       atomic.Int32
	inFlight    atomic.Int32
	maxInFlight atomic.Int32
}

func newVend(life time.Duration) *vend {
	return &vend{now: time.Unix(1_900_000_000, 0), life: life, per: map[string]int{}}
}

func (v *vend) clock() time.Time        { v.mu.Lock(); defer v.mu.Unlock(); return v.now }
func (v *vend) advance(d time.Duration) { v.mu.Lock(); v.now = v.now.Add(d); v.mu.Unlock() }
func (v *vend) setErr(err error)        { v.mu.Lock(); v.err = err; v.mu.Unlock() }

func (v *vend) Fetch(ctx context.Context, r Request) (*Token, error) {
	n := v.calls.Add(1)
	in := v.inFlight.Add(1)
	defer v.inFlight.Add(-1)
	for m := v.maxInFlight.Load(); in > m && !v.maxInFlight.CompareAndSwap(m, in); m = v.maxInFlight.Load() {
	}
	v.mu.Lock()
	v.reqs = append(v.reqs, r)
	v.per[r.Provider]++
	g, err, delay := v.gate, v.err, v.delay
	v.mu.Unlock()
	if g != nil {
		select {
		case <-g:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	time.Sleep(delay)
	if err != nil {
		return nil, err
	}
	now := v.clock()
	issued := now.Add(-v.issuedAgo)
	if r.MinTTL > issued.Add(v.life).Sub(now) {
		issued = now
	}
	exp := issued.Add(v.life)
	return &Token{Provider: r.Provider, AccessToken: fmt.Sprintf("tok-%d", n), TokenType: "Bearer",
		ExpiresIn: int64(exp.Sub(now) / time.Second), ExpiresAt: exp.UTC().Format(time.RFC3339), IssuedAt: issued.UTC().Format(time.RFC3339), Scope: r.Scope}, nil
}

func (v *vend) sent() []Request {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]Request(nil), v.reqs...)
}

func newCache(v *vend, o Options) *Cache {
	o.Now = v.clock
	return New(v, o)
}

// min_ttl is judged on the token's real lifetime (issued_at), not on the
// expires_in it came with, and is sent to the vendor: a token handed out
// with 100 s left of an hour is not served 45 s later to a caller asking
// 60 s, and a caller asking 20 minutes gets 20 minutes.
func TestMinTTLOnTheRealLifetimeAndSentToTheVendor(t *testing.T) {
	v := newVend(time.Hour)
	v.issuedAgo = time.Hour - 100*time.Second
	c := newCache(v, Options{})
	ctx := context.Background()
	if _, err := c.Get(ctx, Request{Provider: "k2", MinTTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	v.advance(45 * time.Second)
	tok, err := c.Get(ctx, Request{Provider: "k2", MinTTL: time.Minute})
	if err != nil || tok.ExpiresIn < 60 || v.calls.Load() != 2 {
		t.Fatalf("served %d s left to a caller asking 60 (%v), %d fetches", tok.ExpiresIn, err, v.calls.Load())
	}
	tok, err = c.Get(ctx, Request{Provider: "k2", MinTTL: 20 * time.Minute})
	if err != nil || tok.ExpiresIn < 20*60 {
		t.Fatalf("asked 20 min: %d s left, %v", tok.ExpiresIn, err)
	}
	for _, r := range v.sent() {
		if r.MinTTL != time.Minute && r.MinTTL != 20*time.Minute {
			t.Fatalf("min_ttl sent: %v", r.MinTTL)
		}
	}
	// Capped at half the lifetime, as the vendor caps it: a 10-minute token
	// with 6 minutes left serves a caller asking an hour.
	v2 := newVend(10 * time.Minute)
	v2.issuedAgo = 4 * time.Minute
	c2 := newCache(v2, Options{})
	if tok, err := c2.Get(ctx, Request{Provider: "k2", MinTTL: time.Hour}); err != nil || tok.ExpiresIn < 5*60 {
		t.Fatalf("min_ttl above half the lifetime: %v %v", tok, err)
	}
}

// Callers joined to one fetch each get a token meeting their own min_ttl.
func TestJoinedCallersEachGetTheirMinTTL(t *testing.T) {
	v := newVend(time.Hour)
	v.issuedAgo, v.gate = time.Hour-599*time.Second, make(chan struct{})
	c := newCache(v, Options{})
	var wg sync.WaitGroup
	lefts := make([]int64, 3)
	for i, minTTL := range []time.Duration{60 * time.Second, 60 * time.Second, 1700 * time.Second} {
		wg.Go(func() {
			tok, err := c.Get(context.Background(), Request{Provider: "k2", MinTTL: minTTL})
			if err != nil {
				t.Error(err)
			}
			lefts[i] = tok.ExpiresIn
		})
	}
	for v.calls.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	close(v.gate)
	wg.Wait()
	if lefts[0] < 60 || lefts[1] < 60 || lefts[2] < 1700 {
		t.Fatalf("left %v for min_ttl 60, 60 and 1700 s", lefts)
	}
	if n := v.calls.Load(); n != 2 {
		t.Fatalf("%d fetches: two callers with one min_ttl share one", n)
	}
}

// The fetch is detached from every caller: one caller cancelled returns at
// once and fails nobody else; a caller with a short deadline does not
// impose it on the fetch; a fetch no one bounds ends at FetchTimeout.
func TestFetchDetachedFromEachCaller(t *testing.T) {
	v := newVend(time.Hour)
	v.gate = make(chan struct{})
	c := newCache(v, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	first := make(chan error, 1)
	go func() { _, err := c.Get(ctx, Request{Provider: "k2"}); first <- err }()
	for v.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() { _, err := c.Get(context.Background(), Request{Provider: "k2"}); second <- err }()
	if err := <-first; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the first caller: %v", err)
	}
	time.Sleep(20 * time.Millisecond) // past the first caller's deadline
	close(v.gate)
	if err := <-second; err != nil {
		t.Fatalf("the caller who waited: %v", err)
	}
	if v.calls.Load() != 1 {
		t.Fatalf("%d fetches", v.calls.Load())
	}

	hung := newVend(time.Hour)
	hung.gate = make(chan struct{}) // never opens
	c = newCache(hung, Options{FetchTimeout: 50 * time.Millisecond})
	if _, err := c.Get(context.Background(), Request{Provider: "k2"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a hung fetch: %v, want it ended by FetchTimeout", err)
	}
}

// 300 keys asked for once, then 24 hourly Renew calls: at most one renewal
// per use (a renewal is not a use), keys left unused are dropped, and
// never more than RenewConcurrency fetches run at once. A key asked for at
// every invocation keeps being renewed.
func TestRenewalsBoundedByUseAndConcurrency(t *testing.T) {
	v := newVend(time.Hour)
	v.delay = time.Millisecond
	c := newCache(v, Options{RenewConcurrency: 4})
	ctx := context.Background()
	for i := range 300 {
		if _, err := c.Get(ctx, Request{Provider: fmt.Sprintf("p%03d", i), MinTTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	v.advance(50 * time.Minute)
	for i := range 24 {
		busy, err := c.Get(ctx, Request{Provider: "busy", MinTTL: time.Minute})
		if err != nil || (i > 1 && busy.ExpiresIn < 3000) {
			t.Fatalf("the busy key at hour %d: %d s left, %v", i, busy.ExpiresIn, err)
		}
		c.Renew(ctx)
		v.advance(40 * time.Minute)
		if _, err := c.Get(ctx, Request{Provider: "busy", MinTTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		v.advance(20 * time.Minute)
	}
	v.mu.Lock()
	for p, n := range v.per {
		if p != "busy" && n > 2 {
			t.Errorf("%s, asked for once, fetched %d times", p, n)
		}
	}
	busy := v.per["busy"]
	v.mu.Unlock()
	if busy > 26 {
		t.Errorf("the busy key fetched %d times in 24 hours", busy)
	}
	if m := v.maxInFlight.Load(); m > 4 {
		t.Errorf("%d renewals in flight at once, bound 4", m)
	}
	s := c.Stats()
	if s.Renewals > 300+24 || s.Entries > 1 || s.Dropped < 300 {
		t.Errorf("stats %+v: want at most one renewal per use and the unused keys dropped", s)
	}
}

// A key nobody asked for in IdleAfter is dropped even with a live token,
// and renewed only if asked for since its last fetch.
func TestIdleKeysDropped(t *testing.T) {
	v := newVend(24 * time.Hour)
	c := newCache(v, Options{IdleAfter: time.Hour})
	ctx := context.Background()
	c.Get(ctx, Request{Provider: "idle"})
	v.advance(time.Hour)
	c.Renew(ctx)
	if s := c.Stats(); s.Entries != 0 || s.Dropped != 1 {
		t.Fatalf("idle an hour: %+v", s)
	}
}

// At most MaxEntries keys, the least recently used evicted and counted,
// and logged without the token.
func TestSizeBoundEvictsLeastRecentlyUsed(t *testing.T) {
	v := newVend(time.Hour)
	var logs bytes.Buffer
	c := newCache(v, Options{MaxEntries: 3, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx := context.Background()
	for _, p := range []string{"a", "b", "c"} {
		c.Get(ctx, Request{Provider: p})
	}
	c.Get(ctx, Request{Provider: "a"}) // a is used again: b is the least recent
	c.Get(ctx, Request{Provider: "d"})
	if s := c.Stats(); s.Entries != 3 || s.Evictions != 1 {
		t.Fatalf("stats %+v", s)
	}
	before := v.calls.Load()
	for _, p := range []string{"a", "c", "d"} {
		c.Get(ctx, Request{Provider: p})
	}
	if v.calls.Load() != before {
		t.Fatal("a recently used key was evicted")
	}
	c.Get(ctx, Request{Provider: "b"})
	if v.calls.Load() != before+1 {
		t.Fatal("the least recently used key was not the one evicted")
	}
	if !strings.Contains(logs.String(), "evicted") || strings.Contains(logs.String(), "tok-") {
		t.Fatalf("eviction log: %s", logs.String())
	}
}

// Failing renewals back off; a key the vendor refuses for good is dropped.
func TestFailingRenewalsBackOffAndRefusedKeysAreDropped(t *testing.T) {
	v := newVend(10 * time.Minute)
	c := newCache(v, Options{})
	ctx := context.Background()
	for _, p := range []string{"flaky", "gone"} {
		if _, err := c.Get(ctx, Request{Provider: p}); err != nil {
			t.Fatal(err)
		}
	}
	v.advance(8 * time.Minute)
	v.setErr(&Error{Code: "UpstreamUnavailable", Message: "provider down"})
	before := v.calls.Load()
	c.Renew(ctx)
	c.Renew(ctx)
	if n := v.calls.Load() - before; n != 2 {
		t.Fatalf("two renewal passes a moment apart: %d fetches, want 2", n)
	}
	v.advance(30 * time.Second)
	v.setErr(&Error{Code: "UnknownProvider", Message: "no provider named gone"})
	c.Renew(ctx)
	if s := c.Stats(); s.Entries != 0 || s.RenewalFailures != 4 {
		t.Fatalf("refused for good: %+v", s)
	}
}

// A rejected token is replaced once; a repeated report gets the
// replacement; and the scope set in any order is one key.
func TestRejectedAndKeySpelling(t *testing.T) {
	v := newVend(time.Hour)
	c := newCache(v, Options{})
	ctx := context.Background()
	a, _ := c.Get(ctx, Request{Provider: "k2", Scope: "write read"})
	if b, _ := c.Get(ctx, Request{Provider: "k2", Scope: "read write read"}); b.AccessToken != a.AccessToken || v.calls.Load() != 1 {
		t.Fatal("one scope set spelled two ways is two keys")
	}
	r1, err := c.Rejected(ctx, Request{Provider: "k2", Scope: "read write"}, TokenSHA256(a.AccessToken))
	if err != nil || r1.AccessToken == a.AccessToken || v.sent()[1].RejectedSHA256 != TokenSHA256(a.AccessToken) {
		t.Fatalf("rejected: %v %v", r1, err)
	}
	r2, _ := c.Rejected(ctx, Request{Provider: "k2", Scope: "read write"}, TokenSHA256(a.AccessToken))
	if r2.AccessToken != r1.AccessToken || v.calls.Load() != 2 {
		t.Fatal("a repeated report fetched again")
	}
	if g, _ := c.Get(ctx, Request{Provider: "k2", Scope: "read write"}); g.AccessToken != r1.AccessToken {
		t.Fatal("the replacement is not cached")
	}
}

// A renewal is not a use: with tokens outliving the renewal interval and
// no idle drop in the way, a key asked for once is renewed once in a day
// of Renew calls every 10 minutes, while a key asked for every hour keeps
// a token renewed ahead (its callers never wait for a fetch).
func TestRenewalIsNotAUse(t *testing.T) {
	v := newVend(2 * time.Hour)
	c := newCache(v, Options{IdleAfter: 48 * time.Hour})
	ctx := context.Background()
	for _, p := range []string{"once", "hourly"} {
		if _, err := c.Get(ctx, Request{Provider: p, MinTTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	hits := 0
	for i := range 24 * 6 {
		if i%6 == 0 {
			before := c.Stats().Hits
			if _, err := c.Get(ctx, Request{Provider: "hourly", MinTTL: time.Minute}); err != nil {
				t.Fatal(err)
			}
			hits += int(c.Stats().Hits - before)
		}
		c.Renew(ctx)
		v.advance(10 * time.Minute)
	}
	v.mu.Lock()
	once, hourly := v.per["once"], v.per["hourly"]
	v.mu.Unlock()
	if once != 2 {
		t.Errorf("a key asked for once was fetched %d times in a day (want the fetch and one renewal)", once)
	}
	if hits != 24 || hourly < 12 {
		t.Errorf("the hourly key: %d of 24 asks served from the cache, %d fetches", hits, hourly)
	}
}
