package vend_test

import (
	"context"
	"fmt"
	"net/http/httptest"
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

// A provider's max_concurrent_fetches and fetch_rate bind what the
// provider sees from every refresher run together: eight shard runs of a
// fanned-out schedule and an overlapping second schedule (16 runs at once),
// six schedules ten seconds apart, against a provider with
// max_concurrent_fetches 1 and fetch_rate 0.05/s (one request per 20 s:
// half a request per run). Measured at the provider: never two requests at
// once, never two within 20 s. Before, each shard run took ⌈1/8⌉ = 1 fetch
// and a fresh 0.05/8 limiter with burst 1, so every run sent one request
// at once: eight in flight, one per run.
func TestProviderCapAndRateBindAcrossShardRunsAndSchedules(t *testing.T) {
	ctx := context.Background()
	clock := vendtest.NewClock()
	sb := sandbox.New()
	sb.SetClock(clock.Now)
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	defs := sandbox.DemoProviders(sb, srv.URL)
	capped := *defs["demo-k2"]
	capped.MaxConcurrentFetches, capped.FetchRate = 1, 0.05
	if err := capped.Validate(); err != nil {
		t.Fatal(err)
	}
	defs["demo-k2"] = &capped
	st := store.NewMemory(clock.Now)
	v := vend.New(vendtest.NewProviders(defs), &upstream.Client{AttemptTimeout: 5 * time.Second, MaxAttempts: 1, Now: clock.Now}, st,
		vend.Options{Now: clock.Now, Sleep: clock.Sleep, DisableRefreshAhead: true, L1MaxAge: -1})
	const keys = 24
	cacheKeys(t, v, "demo-k2", keys)
	sb.ResetStats()
	sb.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Delay: 40 * time.Millisecond})
	clock.Advance(58 * time.Minute) // every key due

	const interval = 10 * time.Second
	renewed := 0
	for range 6 {
		var (
			wg sync.WaitGroup
			mu sync.Mutex
		)
		for range 2 { // two schedules at once
			for sh := range store.Shards {
				wg.Go(func() {
					rctx, cancel := context.WithTimeout(ctx, time.Second)
					defer cancel()
					res, err := v.RefreshDue(rctx, vend.RefreshOptions{Horizon: interval, Shards: []int{sh}, Exclusive: true})
					if err != nil {
						t.Error(err)
					}
					mu.Lock()
					renewed += res.Refreshed
					mu.Unlock()
				})
			}
		}
		wg.Wait()
		clock.Advance(interval)
	}
	if p := sb.PeakInFlight("demo-k2-client"); p > 1 {
		t.Errorf("the provider answered %d token requests at once; max_concurrent_fetches is 1", p)
	}
	times := sb.RequestTimes("demo-k2-client")
	if len(times) < 2 || renewed < 2 {
		t.Fatalf("%d requests, %d renewals in 50 s at 0.05/s: want at least 2 (the runs must still renew)", len(times), renewed)
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < 20*time.Second {
			t.Errorf("requests %d and %d %v apart; fetch_rate 0.05/s allows one per 20 s (%d requests in %v)",
				i-1, i, gap, len(times), times[len(times)-1].Sub(times[0]))
			break
		}
	}
	t.Logf("%d requests, %d renewed, peak %d", len(times), renewed, sb.PeakInFlight("demo-k2-client"))
}

// lagRecorder keeps the refresher's per-run values as the EMF output
// prints them (fleet-wide, one per run).
type lagRecorder struct {
	mu     sync.Mutex
	values map[string][]float64
}

func (r *lagRecorder) Vended(string, vend.Source, time.Duration) {}
func (r *lagRecorder) Upstream(string, time.Duration, string)    {}
func (r *lagRecorder) Event(string, string)                      {}
func (r *lagRecorder) Value(prov, metric, _ string, v float64) {
	if prov != "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.values[metric] = append(r.values[metric], v)
}

// After a deploy that re-keys (a provider's token_url changed, so its
// registration fingerprint did; or the key spelling changed) and a provider
// removed, the keys of the old registration or spelling and of the removed
// provider can never be renewed. They
// leave the refresh index at the first run and are counted neither as due
// nor as lagging: RefreshLag stays under RefreshLagAlarm's 60 s on every
// run. Before, they were skipped every run and RefreshLag grew by the run
// interval (120 s → 8 520 s) until TTL deleted them.
func TestLagTellsTheTruthAfterReKey(t *testing.T) {
	ctx := context.Background()
	clock := vendtest.NewClock()
	up := vendtest.NewUpstream(t)
	provs := vendtest.NewProviders(up.Defs)
	st := store.NewMemory(clock.Now)
	rec := &lagRecorder{values: map[string][]float64{}}
	v := vend.New(provs, vendtest.Client(clock), st, vend.Options{Now: clock.Now, Sleep: clock.Sleep, DisableRefreshAhead: true, L1MaxAge: -1, Observer: rec})
	cacheKeys(t, v, "demo-k2", 5)
	cacheKeys(t, v, "demo-mobi", 3)
	// A record of the current registration under a key spelling its
	// definition no longer makes (an earlier version's).
	if _, err := v.Token(ctx, vend.Request{Provider: "demo-dot", Scope: "read", MinTTL: -1}); err != nil {
		t.Fatal(err)
	}
	dot := up.Defs["demo-dot"]
	cur, err := st.Get(ctx, dot.KeyFor([]string{"read"}).PK, true)
	if err != nil || cur == nil {
		t.Fatalf("demo-dot's record: %v", err)
	}
	old := *cur
	old.PK = "token#demo-dot#" + dot.Fingerprint() + "#read#r=https://api.example/b"
	old.Resource, old.Version, old.RefreshAt = "https://api.example/b", 1, clock.Now().Add(10*time.Minute).Unix()
	if err := st.Put(ctx, &old, 0); err != nil {
		t.Fatal(err)
	}
	moved := *up.Defs["demo-k2"]
	moved.TokenURL = up.URL + sandbox.K2TokenPath + "?tenant=2" // another registration
	provs.Set(&moved)
	provs.Delete("demo-mobi")
	clock.Advance(50 * time.Minute) // past refresh_at

	for run := range 10 {
		res, err := v.RefreshDue(ctx, vend.RefreshOptions{Horizon: time.Minute, Exclusive: true})
		if err != nil {
			t.Fatal(err)
		}
		rec.mu.Lock()
		lag, due := rec.values["RefreshLag"][run], rec.values["RefreshDue"][run]
		rec.mu.Unlock()
		if lag >= 60 || due != 0 || res.Due != 0 {
			t.Fatalf("run %d after the re-key: RefreshLag %v s, RefreshDue %v (%+v); keys that can never be renewed must not count", run, lag, due, res)
		}
		if run == 0 && res.Retired != 9 {
			t.Fatalf("first run retired %d of the 9 keys that can never be renewed: %+v", res.Retired, res)
		}
		clock.Advance(time.Minute)
	}
	left, err := st.Due(ctx, clock.Now().Add(time.Hour), nil)
	if err != nil || len(left) != 0 {
		t.Fatalf("%d keys still in the refresh index (%v)", len(left), err)
	}
}

// slowDefs reads a definition in delay, or gives up with the caller.
type slowDefs struct {
	*vendtest.Providers
	delay time.Duration
}

func (s slowDefs) Get(ctx context.Context, name string) (*provider.Definition, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, fmt.Errorf("read definition %s: %w", name, ctx.Err())
	}
	return s.Providers.Get(ctx, name)
}

// A run reads its providers' definitions in parallel under the renewals'
// context: 40 providers whose definitions take 50 ms each are all renewed
// well inside a 1.5 s deadline, and reads cut by the deadline leave their
// keys deferred, not failed. Before, the definitions were read one after
// another on the run's full context: 40 × 50 ms, the run returned after its
// deadline with 22 keys deferred, and a cut read counted as a failure.
func TestDefinitionReadsKeepTheDeadline(t *testing.T) {
	ctx := context.Background()
	up := vendtest.NewUpstream(t)
	defs := map[string]*provider.Definition{}
	for i := range 40 {
		d := *up.Defs["demo-k2"]
		d.Name = fmt.Sprintf("p%02d", i)
		if err := d.Validate(); err != nil {
			t.Fatal(err)
		}
		defs[d.Name] = &d
	}
	provs := vendtest.NewProviders(defs)
	st := store.NewMemory(nil)
	v := vend.New(provs, vendtest.Client(nil), st, vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	for name := range defs {
		cacheKeys(t, v, name, 1)
	}
	for _, c := range []struct {
		delay                     time.Duration
		refreshed, deferred, fail int
	}{{50 * time.Millisecond, 40, 0, 0}, {2 * time.Second, 0, 40, 0}} {
		slow := vend.New(slowDefs{provs, c.delay}, vendtest.Client(nil), st, vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
		rctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		start := time.Now()
		res, err := slow.RefreshDue(rctx, vend.RefreshOptions{Force: true})
		took := time.Since(start)
		cancel()
		if err != nil || took >= 1500*time.Millisecond {
			t.Fatalf("definitions in %v: the run took %v against a 1.5 s deadline (%+v, %v)", c.delay, took, res, err)
		}
		if res.Refreshed != c.refreshed || res.Deferred != c.deferred || res.Failed != c.fail {
			t.Fatalf("definitions in %v: %+v, want %d renewed, %d deferred, %d failed", c.delay, res, c.refreshed, c.deferred, c.fail)
		}
	}
}
