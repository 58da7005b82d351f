package vend_test

import (
	"context"
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
