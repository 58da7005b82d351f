package app_test

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/obs"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

// stuckPuts holds every write, once switched on, until the caller gives up
// (a throttled or unreachable table).
type stuckPuts struct {
	vend.Store
	on atomic.Bool
}

func (s *stuckPuts) Put(ctx context.Context, it *store.Item, expect int64) error {
	if s.on.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.Store.Put(ctx, it, expect)
}

// The usage flush never takes a handler past its invocation's deadline: a
// vend that returns near its deadline with a usage write queued, against a
// table that does not answer, still returns before the deadline. Before,
// the flush took its full second whatever the deadline (a vend returning
// 600 ms before it ended 400 ms late).
func TestUsageFlushKeepsTheInvocationDeadline(t *testing.T) {
	clock := vendtest.NewClock()
	up := vendtest.NewUpstream(t)
	st := &stuckPuts{Store: store.NewMemory(clock.Now)}
	v := vend.New(vendtest.NewProviders(up.Defs), vendtest.Client(clock), st,
		vend.Options{Now: clock.Now, Sleep: clock.Sleep, L1MaxAge: -1, DisableRefreshAhead: true, IdleAfter: 300 * time.Second})
	a := &app.App{Vendor: v, Log: slog.New(slog.DiscardHandler), Metrics: obs.NewMetrics(io.Discard, "TokenVendor")}
	req := vend.Request{Provider: "demo-k2", MinTTL: -1}
	if _, err := v.Token(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	clock.Advance(7 * time.Minute) // last_used_at is stale: the next read queues a usage write
	st.on.Store(true)
	h := app.Flushing(a, func(ctx context.Context, _ struct{}) (vend.Token, error) { return v.Token(ctx, req) })
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	dl, _ := ctx.Deadline()
	if _, err := h(ctx, struct{}{}); err != nil {
		t.Fatal(err)
	}
	if late := time.Since(dl); late >= 0 {
		t.Fatalf("the handler returned %v after its deadline: the usage flush outlived the invocation", late)
	}
}
