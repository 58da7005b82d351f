package localcache

import (
	"context"
	"sync"
	"testing"
	"time"
)

// A renewal cut by its own Renew's deadline (the extension's renewal
// budget ran out on a slow vend function), or by the deadline of another
// Renew it was joined to, says nothing about the vendor: it is not a
// renewal failure and does not back the key off. Before the fix it counted
// as a failure and the key waited 10 s (doubling to 5 minutes on every cut)
// before the next Renew would try it, even one with time to spare.
func TestRenewCutByADeadlineIsNoFailure(t *testing.T) {
	ctx := context.Background()
	v := newVend(time.Hour)
	c := newCache(v, Options{})
	if _, err := c.Get(ctx, Request{Provider: "p", MinTTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	v.advance(50 * time.Minute)
	v.mu.Lock()
	v.gate = make(chan struct{}) // the vendor is slow
	v.mu.Unlock()

	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	var joined int
	wg.Go(func() { c.Renew(short) })
	time.Sleep(10 * time.Millisecond)
	// A second Renew with time to spare joins the first one's renewal.
	long, cancel2 := context.WithTimeout(ctx, 40*time.Millisecond)
	defer cancel2()
	wg.Go(func() { joined = c.Renew(long) })
	wg.Wait()
	if s := c.Stats(); s.RenewalFailures != 0 {
		t.Fatalf("renewals cut by a deadline counted as %d failures (joined Renew renewed %d)", s.RenewalFailures, joined)
	}
	v.mu.Lock()
	close(v.gate)
	v.gate = nil
	v.mu.Unlock()
	if n := c.Renew(ctx); n != 1 {
		t.Fatalf("the next Renew with time to spare renewed %d keys, want 1 (the key was backing off)", n)
	}
}
