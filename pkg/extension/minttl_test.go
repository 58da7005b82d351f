package extension

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/localcache"
)

// vendAt answers like the vend function on a clock the test moves: every
// token has lifetime life and was issued issuedAgo before the answer, and
// honours the caller's min_ttl as the vendor does.
type vendAt struct {
	mu        sync.Mutex
	now       time.Time
	life      time.Duration
	issuedAgo time.Duration
	calls     atomic.Int32
	minTTLs   []time.Duration
	gate      chan struct{} // when set, fetches wait for it
	err       error
}

func (v *vendAt) clock() time.Time { v.mu.Lock(); defer v.mu.Unlock(); return v.now }

func (v *vendAt) advance(d time.Duration) { v.mu.Lock(); v.now = v.now.Add(d); v.mu.Unlock() }

func (v *vendAt) Fetch(ctx context.Context, r client.Request) (*client.Token, error) {
	n := v.calls.Add(1)
	v.mu.Lock()
	v.minTTLs = append(v.minTTLs, r.MinTTL)
	g, err := v.gate, v.err
	v.mu.Unlock()
	if g != nil {
		select {
		case <-g:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	now := v.clock()
	issued := now.Add(-v.issuedAgo)
	if left := issued.Add(v.life).Sub(now); r.MinTTL > left { // the vendor fetches a newer token
		issued = now
	}
	exp := issued.Add(v.life)
	return &client.Token{Provider: r.Provider, AccessToken: "tok-" + string(rune('A'+n)), TokenType: "Bearer",
		ExpiresIn: int64(exp.Sub(now) / time.Second), ExpiresAt: exp.UTC().Format(time.RFC3339), IssuedAt: issued.UTC().Format(time.RFC3339), Scope: r.Scope}, nil
}

// A token handed out late in its life keeps its real lifetime: 45 s after
// it came with 100 s left (of 3600), 55 s are left, under the default
// min_ttl of 60, so the extension fetches instead of serving it.
func TestMinTTLJudgedOnTheTokensRealLifetime(t *testing.T) {
	v := &vendAt{now: time.Unix(1_900_000_000, 0), life: time.Hour, issuedAgo: time.Hour - 100*time.Second}
	c := newWith(v, secret, localcache.Options{Now: v.clock})
	if _, _, err := c.Token(context.Background(), "k2", "", defaultMinTTL); err != nil {
		t.Fatal(err)
	}
	v.advance(45 * time.Second)
	tok, exp, err := c.Token(context.Background(), "k2", "", defaultMinTTL)
	if err != nil {
		t.Fatal(err)
	}
	if left := exp.Sub(v.clock()); left < defaultMinTTL {
		t.Fatalf("served %s (%v left) below min_ttl %v", tok.AccessToken, left, defaultMinTTL)
	}
	if v.calls.Load() != 2 {
		t.Fatalf("%d fetches, want 2", v.calls.Load())
	}
}

// Callers joined to one fetch each get a token meeting their own min_ttl.
func TestJoinedCallersEachGetTheirMinTTL(t *testing.T) {
	v := &vendAt{now: time.Unix(1_900_000_000, 0), life: time.Hour, issuedAgo: time.Hour - 599*time.Second, gate: make(chan struct{})}
	c := newWith(v, secret, localcache.Options{Now: v.clock})
	var wg sync.WaitGroup
	lefts := make([]time.Duration, 2)
	for i, minTTL := range []time.Duration{60 * time.Second, 1700 * time.Second} {
		wg.Go(func() {
			_, exp, err := c.Token(context.Background(), "k2", "", minTTL)
			if err != nil {
				t.Error(err)
				return
			}
			lefts[i] = exp.Sub(v.clock())
		})
		time.Sleep(20 * time.Millisecond) // the second joins while the first fetch is in flight
	}
	close(v.gate)
	wg.Wait()
	if lefts[0] < 60*time.Second || lefts[1] < 1700*time.Second {
		t.Fatalf("left %v for min_ttl 60 s and 1700 s", lefts)
	}
}

// One caller giving up does not fail the others joined to its fetch.
func TestOneCallersCancellationDoesNotFailOthers(t *testing.T) {
	v := &vendAt{now: time.Unix(1_900_000_000, 0), life: time.Hour, gate: make(chan struct{})}
	c := newWith(v, secret, localcache.Options{Now: v.clock})
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, _, err := c.Token(ctx, "k2", "", defaultMinTTL)
		first <- err
	}()
	time.Sleep(20 * time.Millisecond)
	second := make(chan error, 1)
	go func() {
		_, _, err := c.Token(context.Background(), "k2", "", defaultMinTTL)
		second <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-first; err == nil {
		t.Fatal("the cancelled caller got an answer")
	}
	close(v.gate)
	if err := <-second; err != nil {
		t.Fatalf("the caller who waited: %v", err)
	}
	if v.calls.Load() != 1 {
		t.Fatalf("%d fetches", v.calls.Load())
	}
}

// Failing renewals back off instead of running at every invocation, and a
// provider the vendor no longer knows (or refuses) is dropped.
func TestFailingRenewalsBackOffAndRefusedKeysAreDropped(t *testing.T) {
	v := &vendAt{now: time.Unix(1_900_000_000, 0), life: 10 * time.Minute}
	c := newWith(v, secret, localcache.Options{Now: v.clock})
	for _, p := range []string{"flaky", "gone"} {
		if _, _, err := c.Token(context.Background(), p, "", 0); err != nil {
			t.Fatal(err)
		}
	}
	v.advance(8 * time.Minute) // past the refresh point
	v.mu.Lock()
	v.err = &client.Error{Code: "UpstreamUnavailable", Message: "provider down"}
	v.mu.Unlock()
	before := v.calls.Load()
	c.RenewDue(context.Background())
	if n := v.calls.Load() - before; n != 2 {
		t.Fatalf("first renewal pass: %d fetches", n)
	}
	c.RenewDue(context.Background()) // the next invocation, a moment later
	if n := v.calls.Load() - before; n != 2 {
		t.Fatalf("a failed renewal was retried at once: %d fetches", n)
	}
	v.advance(30 * time.Second)
	v.mu.Lock()
	v.err = &client.Error{Code: "UnknownProvider", Message: "no provider named gone"}
	v.mu.Unlock()
	c.RenewDue(context.Background())
	if s := c.Stats(); s.Entries != 0 || s.Dropped != 2 { // both are refused now
		t.Fatalf("a key the vendor refuses permanently is still held: %+v", s)
	}
	var ce *client.Error
	if !errors.As(v.err, &ce) {
		t.Fatal("unreachable")
	}
}

// targetVend records the target of each fetch.
type targetVend struct {
	mu   sync.Mutex
	seen []string
}

func (f *targetVend) Fetch(_ context.Context, r client.Request) (*client.Token, error) {
	f.mu.Lock()
	f.seen = append(f.seen, r.Resource+"|"+r.Audience)
	n := len(f.seen)
	f.mu.Unlock()
	exp := time.Now().Add(time.Hour)
	return &client.Token{Provider: r.Provider, AccessToken: "tok-" + string(rune('A'+n)), TokenType: "Bearer", ExpiresIn: 3600,
		ExpiresAt: exp.UTC().Format(time.RFC3339), IssuedAt: time.Now().UTC().Format(time.RFC3339)}, nil
}

// The extension passes resource and audience to the vendor and caches per
// target (normalized like scopes).
func TestExtensionTarget(t *testing.T) {
	f := &targetVend{}
	h := New(f, secret, nil).Handler()
	for _, q := range []string{"resource=https%3A%2F%2Fa.example%2F", "resource=https%3A%2F%2Fb.example%2F&audience=ledger", "resource=https%3A%2F%2Fa.example%2F", "audience=ledger&resource=https%3A%2F%2Fb.example%2F"} {
		if rec, m := do(h, "GET", "/v1/tokens/k2?"+q, "", secret); rec.Code != 200 {
			t.Fatalf("%s: %d %v", q, rec.Code, m)
		}
	}
	if len(f.seen) != 2 || f.seen[0] != "https://a.example/|" || f.seen[1] != "https://b.example/|ledger" {
		t.Fatalf("fetches %q: want one per target", f.seen)
	}
}
