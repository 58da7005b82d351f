package vend_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

// One hung provider must not use a whole refresher run: with its keys first
// in the table and a run that has a deadline (the function timeout), every
// key of the healthy provider is still renewed, and the hung provider is
// asked once or twice, not once per key.
func TestRefresherHungProviderDoesNotStarveOthers(t *testing.T) {
	ctx := context.Background()
	clock := vendtest.NewClock()
	up := vendtest.NewUpstream(t)
	provs := vendtest.NewProviders(up.Defs)
	st := store.NewMemory(clock.Now)
	client := &upstream.Client{AttemptTimeout: 300 * time.Millisecond, MaxAttempts: 1, MaxRetryAfter: -1, Now: clock.Now}
	v := vend.New(provs, client, st, vend.Options{Now: clock.Now, Sleep: clock.Sleep, LeaseDuration: time.Second, DisableRefreshAhead: true})
	hung := []string{"read", "write", "admin", "read write", "read admin", "write admin", "read write admin"}
	for _, s := range hung {
		if _, err := v.Token(ctx, vend.Request{Provider: "demo-dot", Scope: s, MinTTL: -1}); err != nil {
			t.Fatal(err)
		}
	}
	healthy := []string{"a", "b", "c", "d", "e", "f", "g"}
	for _, s := range healthy {
		if _, err := v.Token(ctx, vend.Request{Provider: "demo-mobi", Scope: s, MinTTL: -1}); err != nil {
			t.Fatal(err)
		}
	}
	before := up.Server.Requests("demo-dot-client")
	up.Server.SetFault(sandbox.Fault{ClientID: "demo-dot-client", Delay: time.Minute})
	rctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	res, err := v.RefreshDue(rctx, vend.RefreshOptions{Force: true, Parallel: 4, Reserve: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Refreshed != len(healthy) {
		t.Fatalf("healthy keys renewed: %d of %d (%+v)", res.Refreshed, len(healthy), res)
	}
	if n := up.Server.Requests("demo-dot-client") - before; n > 2 {
		t.Fatalf("the hung provider was asked %d times in one run", n)
	}
	if res.Failed+res.Deferred+res.Skipped != len(hung) {
		t.Fatalf("hung provider's keys unaccounted for: %+v", res)
	}
}

// inflight wraps the sandbox, counting concurrent token requests per client.
type inflight struct {
	h     http.Handler
	delay time.Duration
	mu    sync.Mutex
	cur   map[string]int
	peak  map[string]int
}

func (f *inflight) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	form, _ := url.ParseQuery(string(body))
	id := form.Get("client_id")
	f.mu.Lock()
	f.cur[id]++
	f.peak[id] = max(f.peak[id], f.cur[id])
	f.mu.Unlock()
	time.Sleep(f.delay)
	f.h.ServeHTTP(w, r)
	f.mu.Lock()
	f.cur[id]--
	f.mu.Unlock()
}

// The per-provider cap holds at the provider: many due keys of one
// provider never make more concurrent token requests than its
// max_concurrent_fetches, while the run as a whole keeps many in flight.
func TestRefresherPerProviderCapAtTheProvider(t *testing.T) {
	ctx := context.Background()
	sb := sandbox.New()
	f := &inflight{h: sb.Handler(), delay: 40 * time.Millisecond, cur: map[string]int{}, peak: map[string]int{}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	defs := sandbox.DemoProviders(sb, srv.URL)
	capped := *defs["demo-k2"] // client_secret_post: the client id is in the body
	capped.MaxConcurrentFetches = 3
	if err := capped.Validate(); err != nil {
		t.Fatal(err)
	}
	defs["demo-k2"] = &capped
	v := vend.New(vendtest.NewProviders(defs), vendtest.Client(nil), store.NewMemory(nil), vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	for i := range 30 {
		if _, err := v.Token(ctx, vend.Request{Provider: "demo-k2", Scope: fmt.Sprint("s", i), MinTTL: -1}); err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	clear(f.peak)
	f.mu.Unlock()
	res, err := v.RefreshDue(ctx, vend.RefreshOptions{Force: true})
	if err != nil || res.Refreshed != 30 || res.Due != 30 {
		t.Fatalf("%+v %v", res, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.peak["demo-k2-client"]; p > 3 || p < 2 {
		t.Fatalf("peak concurrent token requests %d; the cap is 3", p)
	}
}

// A run whose deadline arrives mid-renewal returns before it, and leaves no
// lease held: every hung key's lease is released (or lapses at once).
func TestRefresherReturnsBeforeItsDeadline(t *testing.T) {
	ctx := context.Background()
	up := vendtest.NewUpstream(t)
	st := store.NewMemory(nil)
	client := &upstream.Client{AttemptTimeout: 10 * time.Second, MaxAttempts: 1, MaxRetryAfter: -1}
	v := vend.New(vendtest.NewProviders(up.Defs), client, st, vend.Options{LeaseDuration: 20 * time.Second, DisableRefreshAhead: true, L1MaxAge: -1})
	var pks []string
	for i := range 6 {
		s := fmt.Sprint("s", i)
		if _, err := v.Token(ctx, vend.Request{Provider: "demo-mobi", Scope: s, MinTTL: -1}); err != nil {
			t.Fatal(err)
		}
		pks = append(pks, up.Defs["demo-mobi"].KeyFor([]string{s}).PK)
	}
	up.Server.SetFault(sandbox.Fault{ClientID: "demo-mobi-client", Delay: time.Minute})
	rctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := v.RefreshDue(rctx, vend.RefreshOptions{Force: true})
	took := time.Since(start)
	if err != nil || took >= 1500*time.Millisecond {
		t.Fatalf("run took %v (deadline 1.5 s): %+v %v", took, res, err)
	}
	t.Logf("%+v in %v", res, took)
	if res.Refreshed != 0 || res.Failed+res.Deferred+res.Skipped != 6 {
		t.Fatalf("%+v", res)
	}
	// The run's own deadline is not the provider's failure: no cooldown
	// that would refuse callers, no failure recorded on the keys.
	if cd, _ := st.Get(ctx, "cooldown#demo-mobi", true); cd != nil && time.Now().Before(time.UnixMilli(cd.CooldownUntil)) {
		t.Fatal("the run's deadline opened a cooldown for the provider")
	}
	for _, pk := range pks {
		it, _ := st.Get(ctx, pk, true)
		if it != nil && it.LastError != "" {
			t.Fatalf("%s: a failure was recorded for a renewal the run cut (%s)", pk, it.LastError)
		}
		if it == nil || it.Token.IsZero() {
			t.Fatalf("%s: the cached token was lost", pk)
		}
		if it.LeaseOwner != "" && time.Now().Before(it.LeaseUntil()) {
			t.Fatalf("%s: lease still held after the run returned", pk)
		}
	}
}

// ctxStore fails as the SDK does once the caller's context is done.
type ctxStore struct {
	vend.Store
	mu     sync.Mutex
	writes int
	slow   bool // reads wait for the caller's context to end
}

func (c *ctxStore) Get(ctx context.Context, pk string, consistent bool) (*store.Item, error) {
	c.mu.Lock()
	slow := c.slow
	c.mu.Unlock()
	if slow {
		<-ctx.Done()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.Store.Get(ctx, pk, consistent)
}

func (c *ctxStore) Put(ctx context.Context, it *store.Item, expect int64) error {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Store.Put(ctx, it, expect)
}

// A store call failed by the caller's own deadline is not a store outage:
// it must not open the instance's breaker (the next refresher run found
// every key "store unavailable" for 5 s, bench §11).
func TestCallersDeadlineDoesNotOpenTheStoreBreaker(t *testing.T) {
	up := vendtest.NewUpstream(t)
	cs := &ctxStore{Store: store.NewMemory(nil)}
	v := vend.New(vendtest.NewProviders(up.Defs), vendtest.Client(nil), cs, vend.Options{L1MaxAge: -1, DisableRefreshAhead: true})
	if _, err := v.Token(context.Background(), vend.Request{Provider: "demo-k2", MinTTL: -1}); err != nil {
		t.Fatal(err)
	}
	// A refresher run whose deadline arrives while its reads are in flight.
	cs.mu.Lock()
	cs.slow = true
	cs.mu.Unlock()
	rctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
	defer cancel()
	if res, err := v.RefreshDue(rctx, vend.RefreshOptions{Force: true}); err != nil || res.Deferred != 1 || res.Failed != 0 {
		t.Fatalf("a renewal cut by the run's deadline is deferred, not failed: %+v %v", res, err)
	}
	cs.mu.Lock()
	cs.slow, cs.writes = false, 0
	cs.mu.Unlock()
	if _, err := v.Token(context.Background(), vend.Request{Provider: "demo-mobi", MinTTL: -1}); err != nil {
		t.Fatal(err)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.writes == 0 {
		t.Fatal("the next call was vended around the store: the breaker opened for a caller's deadline")
	}
}
