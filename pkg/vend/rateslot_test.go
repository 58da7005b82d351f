package vend_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

// A provider's fetch_rate spaces the requests the provider sees, even when
// the run's slots are all taken by another provider's slow renewals: the
// rate slot is reserved when the request can go, not before waiting for
// one of the run's slots. One run slot (Parallel 1), demo-mobi answering in
// 1 s, demo-k2 at fetch_rate 2/s (500 ms apart): measured at the provider,
// demo-k2's requests are 500 ms apart less the store writes and scheduling
// between a slot and its request (asserted: at least 250 ms, which a loaded
// test machine keeps). Before, a demo-k2 request that
// reserved its slot and then waited a second for the run's slot went out
// late, and the next slot (500 ms after the first) had already come: two
// requests within a few milliseconds.
func TestRateSlotTakenWhenTheRequestCanGo(t *testing.T) {
	ctx := context.Background()
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	defs := sandbox.DemoProviders(sb, srv.URL)
	rated := *defs["demo-k2"]
	rated.MaxConcurrentFetches, rated.FetchRate = 1, 2
	if err := rated.Validate(); err != nil {
		t.Fatal(err)
	}
	defs["demo-k2"] = &rated
	st := store.NewMemory(nil)
	v := vend.New(vendtest.NewProviders(defs), &upstream.Client{AttemptTimeout: 5 * time.Second, MaxAttempts: 1}, st,
		vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	cacheKeys(t, v, "demo-mobi", 1)
	cacheKeys(t, v, "demo-k2", 3)
	sb.ResetStats()
	sb.SetFault(sandbox.Fault{ClientID: "demo-mobi-client", Delay: time.Second})

	res, err := v.RefreshDue(ctx, vend.RefreshOptions{Force: true, Parallel: 1})
	if err != nil || res.Refreshed != 4 {
		t.Fatalf("%+v (%v): want the 4 keys renewed", res, err)
	}
	times := sb.RequestTimes("demo-k2-client")
	if len(times) != 3 {
		t.Fatalf("demo-k2 asked %d times, want 3", len(times))
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < 250*time.Millisecond {
			t.Fatalf("demo-k2's requests %d and %d %v apart; fetch_rate 2/s allows one per 500 ms (%v)", i-1, i, gap, times)
		}
	}
}

// A fetch_rate too small for a time.Duration (1e-12/s: 10^21 ns between
// requests) overflowed into a negative interval, and the provider was
// asked with no limit at all. Definitions now refuse a fetch_rate below
// one request a day, naming the field, and the smallest rate accepted
// binds: three keys due, one request.
func TestTinyFetchRateNeverUnlimited(t *testing.T) {
	ctx := context.Background()
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	defs := sandbox.DemoProviders(sb, srv.URL)
	tiny := *defs["demo-k2"]
	tiny.FetchRate = 1e-12
	if err := tiny.Validate(); err == nil || !strings.Contains(err.Error(), "fetch_rate") {
		t.Errorf("fetch_rate 1e-12 (a request every 31 700 years): %v, want a refusal naming fetch_rate", err)
	}
	slow := *defs["demo-k2"]
	slow.FetchRate = provider.MinFetchRate
	if err := slow.Validate(); err != nil {
		t.Fatal(err)
	}
	defs["demo-k2"] = &slow
	st := store.NewMemory(nil)
	v := vend.New(vendtest.NewProviders(defs), &upstream.Client{AttemptTimeout: 5 * time.Second, MaxAttempts: 1}, st,
		vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	cacheKeys(t, v, "demo-k2", 3)
	sb.ResetStats()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	res, err := v.RefreshDue(rctx, vend.RefreshOptions{Force: true})
	if n := len(sb.RequestTimes("demo-k2-client")); err != nil || n > 1 {
		t.Fatalf("fetch_rate %g: %d requests in one run (%+v, %v), want at most 1", slow.FetchRate, n, res, err)
	}
}
