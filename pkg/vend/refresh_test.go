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

	"github.com/token-vendor/token-vendor/pkg/provider"
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
	asked map[string]int // token requests per scope
}

func (f *inflight) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	form, _ := url.ParseQuery(string(body))
	id := form.Get("client_id")
	f.mu.Lock()
	f.cur[id]++
	f.peak[id] = max(f.peak[id], f.cur[id])
	f.asked[form.Get("scope")]++
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
	f, defs := countingSandbox(t, 40*time.Millisecond)
	capped := *defs["demo-k2"] // client_secret_post: the client id is in the body
	capped.MaxConcurrentFetches = 3
	if err := capped.Validate(); err != nil {
		t.Fatal(err)
	}
	defs["demo-k2"] = &capped
	v := vend.New(vendtest.NewProviders(defs), vendtest.Client(nil), store.NewMemory(nil), vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	cacheKeys(t, v, "demo-k2", 30)
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

// Overlapping scheduled runs never renew one shard at once: each run takes
// its shards' leases first and leaves the busy ones. With every shard's run
// started twice at the same moment (a fan-out dispatch and an overlapping
// one), each due key is renewed exactly once at the provider; a run killed
// with its leases held frees its shards at its deadline.
func TestOverlappingShardRunsRenewEachKeyOnce(t *testing.T) {
	ctx := context.Background()
	clock := vendtest.NewClock()
	f, defs := countingSandbox(t, 30*time.Millisecond)
	st := store.NewMemory(clock.Now)
	v := vend.New(vendtest.NewProviders(defs), &upstream.Client{AttemptTimeout: 5 * time.Second, MaxAttempts: 1, Now: clock.Now}, st,
		vend.Options{Now: clock.Now, DisableRefreshAhead: true, L1MaxAge: -1})
	const keys = 60
	cacheKeys(t, v, "demo-k2", keys)
	f.mu.Lock()
	clear(f.asked)
	f.mu.Unlock()
	clock.Advance(58 * time.Minute) // every key due within the next minute

	var (
		mu      sync.Mutex
		total   vend.RefreshResult
		wg      sync.WaitGroup
		perRuns = map[int]int{}
	)
	for range 2 {
		for sh := range store.Shards {
			wg.Go(func() {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				res, err := v.RefreshDue(rctx, vend.RefreshOptions{Horizon: time.Minute, Shards: []int{sh}, Exclusive: true})
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				defer mu.Unlock()
				total.Due += res.Due
				total.Refreshed += res.Refreshed
				total.ShardsBusy += res.ShardsBusy
				if res.Refreshed > 0 {
					perRuns[sh]++
				}
			})
		}
	}
	wg.Wait()
	if total.Refreshed != keys {
		t.Fatalf("renewed %d of %d keys (%+v)", total.Refreshed, keys, total)
	}
	f.mu.Lock()
	for i := range keys {
		if n := f.asked[fmt.Sprint("s", i)]; n != 1 {
			t.Errorf("key s%d asked for %d times, want exactly once", i, n)
		}
	}
	f.mu.Unlock()
	for sh, n := range perRuns {
		if n != 1 {
			t.Errorf("shard %d renewed by %d runs", sh, n)
		}
	}
	if total.ShardsBusy == 0 {
		t.Log("no run found its shard busy this time (the first finished before the second began); exactly-once held through the index")
	}

	// Leases are given back when a run ends: the next run takes every shard.
	if res, err := v.RefreshDue(ctx, vend.RefreshOptions{Horizon: time.Minute, Exclusive: true}); err != nil || res.ShardsBusy != 0 || res.Due != 0 {
		t.Fatalf("after the runs: %+v %v", res, err)
	}
	// A run killed holding shard 0 keeps it until its deadline, no longer.
	killed := &store.Item{PK: "shard#0", Version: 1, LeaseOwner: "killed", LeaseUntilMS: clock.Now().Add(30 * time.Second).UnixMilli()}
	cur, _ := st.Get(ctx, "shard#0", true)
	if err := st.Put(ctx, killed, cur.Version); err != nil {
		t.Fatal(err)
	}
	if res, _ := v.RefreshDue(ctx, vend.RefreshOptions{Horizon: time.Minute, Exclusive: true}); res.ShardsBusy != 1 {
		t.Fatalf("a live lease of a killed run: %+v, want shard 0 busy", res)
	}
	clock.Advance(31 * time.Second)
	if res, _ := v.RefreshDue(ctx, vend.RefreshOptions{Horizon: time.Minute, Exclusive: true}); res.ShardsBusy != 0 {
		t.Fatalf("a lapsed lease still blocks its shard: %+v", res)
	}
}

// Two runs truly at once: while one holds every shard (its renewals in
// flight), the other renews nothing and says the shards were busy.
func TestSecondRunFindsShardsBusy(t *testing.T) {
	ctx := context.Background()
	f, defs := countingSandbox(t, 300*time.Millisecond)
	v := vend.New(vendtest.NewProviders(defs), vendtest.Client(nil), store.NewMemory(nil), vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	cacheKeys(t, v, "demo-k2", 8)
	first := make(chan vend.RefreshResult)
	go func() {
		res, _ := v.RefreshDue(ctx, vend.RefreshOptions{Force: true, Exclusive: true})
		first <- res
	}()
	for deadline := time.Now().Add(5 * time.Second); ; {
		f.mu.Lock()
		busy := f.cur["demo-k2-client"] > 0
		f.mu.Unlock()
		if busy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first run never reached the provider")
		}
		time.Sleep(5 * time.Millisecond)
	}
	second, err := v.RefreshDue(ctx, vend.RefreshOptions{Force: true, Exclusive: true})
	if err != nil || second.ShardsBusy != store.Shards || second.Due != 0 || second.Refreshed != 0 {
		t.Fatalf("second run: %+v %v", second, err)
	}
	if res := <-first; res.Refreshed != 8 || res.ShardsBusy != 0 {
		t.Fatalf("first run: %+v", res)
	}
}

// A fanned-out run's shard invocations keep a provider's cap: its keys are
// all in its own shard, renewed by that shard's run alone, so eight shard
// runs at once keep the provider within its max_concurrent_fetches, not
// eight times it.
func TestShardRunsShareTheProviderCap(t *testing.T) {
	ctx := context.Background()
	f, defs := countingSandbox(t, 40*time.Millisecond)
	capped := *defs["demo-k2"]
	capped.MaxConcurrentFetches = 8
	if err := capped.Validate(); err != nil {
		t.Fatal(err)
	}
	defs["demo-k2"] = &capped
	v := vend.New(vendtest.NewProviders(defs), vendtest.Client(nil), store.NewMemory(nil), vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	const keys = 96
	cacheKeys(t, v, "demo-k2", keys)
	f.mu.Lock()
	clear(f.peak)
	f.mu.Unlock()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		renewed int
	)
	for sh := range store.Shards {
		wg.Go(func() {
			res, err := v.RefreshDue(ctx, vend.RefreshOptions{Force: true, Shards: []int{sh}, Exclusive: true})
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			renewed += res.Refreshed
			mu.Unlock()
		})
	}
	wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.peak["demo-k2-client"]; renewed != keys || p > 8 || p < 2 {
		t.Fatalf("renewed %d of %d; peak concurrent token requests %d across the shard runs; the cap is 8", renewed, keys, p)
	}
}

// slowPuts delays every write once switched on, as a loaded store does,
// giving up when the caller's context ends (as the SDK does).
type slowPuts struct {
	vend.Store
	mu    sync.Mutex
	delay time.Duration
}

func (s *slowPuts) Put(ctx context.Context, it *store.Item, expect int64) error {
	s.mu.Lock()
	d := s.delay
	s.mu.Unlock()
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.Store.Put(ctx, it, expect)
}

// A run returns before its deadline even when the writes settling its cut
// renewals are slow (a loaded table): they are abandoned at the run's hard
// deadline and their leases lapse, instead of running up to 2 s past it
// (bench §11 found fan-out runs 150 ms late on a loaded machine).
func TestRunReturnsBeforeItsDeadlineWhenTheStoreIsSlow(t *testing.T) {
	ctx := context.Background()
	up := vendtest.NewUpstream(t)
	st := &slowPuts{Store: store.NewMemory(nil)}
	client := &upstream.Client{AttemptTimeout: 10 * time.Second, MaxAttempts: 1, MaxRetryAfter: -1}
	v := vend.New(vendtest.NewProviders(up.Defs), client, st, vend.Options{LeaseDuration: 20 * time.Second, DisableRefreshAhead: true, L1MaxAge: -1})
	cacheKeys(t, v, "demo-mobi", 4)
	up.Server.SetFault(sandbox.Fault{ClientID: "demo-mobi-client", Delay: time.Minute})
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	go func() {
		// Lease and shard writes at the start go through; the settling ones
		// after the cut (2.5 s in) take 1.5 s each.
		time.Sleep(2 * time.Second)
		st.mu.Lock()
		st.delay = 1500 * time.Millisecond
		st.mu.Unlock()
	}()
	start := time.Now()
	res, err := v.RefreshDue(rctx, vend.RefreshOptions{Horizon: time.Minute, Force: true, Exclusive: true})
	if took := time.Since(start); err != nil || took >= 3*time.Second {
		t.Fatalf("run took %v (deadline 3 s): %+v %v", took, res, err)
	}
	if res.Refreshed != 0 || res.Deferred+res.Failed != 4 {
		t.Fatalf("%+v", res)
	}
}

// cacheKeys vends n keys of provider once (scopes s0, s1, …), so a run has
// them to renew.
func cacheKeys(t *testing.T, v *vend.Vendor, provider string, n int) {
	t.Helper()
	for i := range n {
		if _, err := v.Token(context.Background(), vend.Request{Provider: provider, Scope: fmt.Sprint("s", i), MinTTL: -1}); err != nil {
			t.Fatal(err)
		}
	}
}

// countingSandbox serves the demo providers behind inflight, answering
// each token request after delay.
func countingSandbox(t *testing.T, delay time.Duration) (*inflight, map[string]*provider.Definition) {
	sb := sandbox.New()
	f := &inflight{h: sb.Handler(), delay: delay, cur: map[string]int{}, peak: map[string]int{}, asked: map[string]int{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, sandbox.DemoProviders(sb, srv.URL)
}
