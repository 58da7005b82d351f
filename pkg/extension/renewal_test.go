package extension

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/localcache"
)

// countingVend wraps vendAt, counting fetches per provider and the most in
// flight at once.
type countingVend struct {
	*vendAt
	mu          sync.Mutex
	per         map[string]int
	inFlight    atomic.Int32
	maxInFlight atomic.Int32
}

func (v *countingVend) Fetch(ctx context.Context, r client.Request) (*client.Token, error) {
	n := v.inFlight.Add(1)
	defer v.inFlight.Add(-1)
	for {
		m := v.maxInFlight.Load()
		if n <= m || v.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	v.mu.Lock()
	v.per[r.Provider]++
	v.mu.Unlock()
	time.Sleep(time.Millisecond) // long enough for renewals to overlap
	return v.vendAt.Fetch(ctx, r)
}

// 300 keys asked for once, then 24 hourly invocations: renewals are
// bounded by use (at most one per use), not one per key per invocation
// (7 200), and run a few at a time, not 300 vend invokes at once. A
// renewal is not a use, so the vendor's idle retirement can see the key
// is unused.
func TestRenewalsAreBoundedByUseAndConcurrency(t *testing.T) {
	v := &countingVend{vendAt: &vendAt{now: time.Unix(1_900_000_000, 0), life: time.Hour}, per: map[string]int{}}
	c := newWith(v, secret, localcache.Options{Now: v.clock})
	for i := range 300 {
		if _, _, err := c.Token(context.Background(), fmt.Sprintf("p%03d", i), "", defaultMinTTL); err != nil {
			t.Fatal(err)
		}
	}
	v.advance(50 * time.Minute) // past the refresh point
	for range 24 {
		c.RenewDue(context.Background())
		v.advance(time.Hour)
	}
	total := 0
	for p, n := range v.per {
		if n > 2 {
			t.Errorf("%s, asked for once, was fetched %d times", p, n)
		}
		total += n
	}
	if total > 600 {
		t.Errorf("%d fetches for 300 keys asked for once", total)
	}
	if m := v.maxInFlight.Load(); m > 8 {
		t.Errorf("%d vend invokes in flight at once", m)
	}
}
