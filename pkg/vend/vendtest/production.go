package vendtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// productionScenarios are what a real deployment does that a kind lab does
// not: SDK retries of writes that landed, revocations under a held lease,
// stalled holders, providers that say Retry-After on the first answer or
// never answer, short-lived tokens and a throttled KMS.
var productionScenarios = map[string]func(*testing.T, NewStore){
	"RetriedWritesThatLandedAreRecognised":     testRetriedWritesThatLandedAreRecognised,
	"RevokeDuringHeldLeaseNoABA":               testRevokeDuringHeldLeaseNoABA,
	"StalledHolderServesTokenStoredMeanwhile":  testStalledHolderServesTokenStoredMeanwhile,
	"RetryAfterOnFirst5xxOpensCooldown":        testRetryAfterOnFirst5xxOpensCooldown,
	"NetworkErrorsOpenCooldown":                testNetworkErrorsOpenCooldown,
	"ShortLivedTokensRenewOncePerHalfLifetime": testShortLivedTokensRenewOncePerHalfLifetime,
	"UnopenableTokenDoesNotStampede":           testUnopenableTokenDoesNotStampede,
}

// sdkRetriedStore applies every matching Put and then repeats it, as the
// SDK's retryer does after a 5xx that came back from a write that landed:
// the repeat fails its own condition.
type sdkRetriedStore struct {
	vend.Store
	match   func(*store.Item) bool
	retried atomic.Int32
}

func (s *sdkRetriedStore) Put(ctx context.Context, it *store.Item, expect int64) error {
	if err := s.Store.Put(ctx, it, expect); err != nil || !s.match(it) {
		return err
	}
	s.retried.Add(1)
	return s.Store.Put(ctx, it, expect)
}

// Events records core events by name (a vend.Observer).
type Events struct {
	mu sync.Mutex
	n  map[string]int
}

func (e *Events) Vended(string, vend.Source, time.Duration) {}
func (e *Events) Upstream(string, time.Duration, string)    {}
func (e *Events) Value(string, string, string, float64)     {}
func (e *Events) Event(_, name string)                      { e.mu.Lock(); e.n[name]++; e.mu.Unlock() }

// Count is how many times the event was seen.
func (e *Events) Count(name string) int { e.mu.Lock(); defer e.mu.Unlock(); return e.n[name] }

// NewEvents returns an empty recorder.
func NewEvents() *Events { return &Events{n: map[string]int{}} }
func testRetriedWritesThatLandedAreRecognised(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	// Every write is retried after landing: the lease take, the token write
	// and (after a failure) the release.
	st := &sdkRetriedStore{Store: f.store, match: func(*store.Item) bool { return true }}
	ev := NewEvents()
	v := f.instance(vend.Options{DisableRefreshAhead: true, Observer: ev}, st, nil)
	start := f.clock.Now()
	tok, err := v.Token(bg, req("demo-k2", ""))
	if err != nil {
		t.Fatal(err)
	}
	if waited := f.clock.Now().Sub(start); waited >= time.Second {
		t.Fatalf("the instance waited %v on its own lease", waited)
	}
	if n := f.requests("demo-k2"); n != 1 || st.retried.Load() < 2 {
		t.Fatalf("upstream requests %d, retried writes %d", n, st.retried.Load())
	}
	if n := ev.Count("store_write_lost"); n != 0 {
		t.Fatalf("a token write that landed was counted lost %d times", n)
	}
	// The token is in the store: another instance reads it, no fetch.
	w := f.vendor(vend.Options{DisableRefreshAhead: true})
	if got, err := w.Token(bg, req("demo-k2", "")); err != nil || got.AccessToken != tok.AccessToken || got.Source != vend.FromL2 {
		t.Fatalf("stored token: %v %v", got.Source, err)
	}
	// A failure record that landed and was retried frees the lease too.
	f.up.Server.SetFault(sandbox.Fault{ClientID: "demo-dot-client", Status: 400, Times: 1})
	if _, err := v.Token(bg, req("demo-dot", "")); err == nil {
		t.Fatal("want the injected refusal")
	}
	it, _ := f.store.Get(bg, f.up.Defs["demo-dot"].KeyFor([]string{"read"}).PK, true)
	if it == nil || it.LeaseOwner != "" || it.LastError == "" {
		t.Fatalf("failure not recorded or lease not freed: %+v", it)
	}
}

// gatedFetcher holds each fetch until the test releases it, optionally
// with an error (a fetch that timed out while its holder was stalled).
type gatedFetcher struct {
	vend.Fetcher
	calls chan chan error
}

func newGate(clock *Clock) *gatedFetcher {
	return &gatedFetcher{Fetcher: Client(clock), calls: make(chan chan error)}
}

func (g *gatedFetcher) Fetch(ctx context.Context, def *provider.Definition, key provider.Key) (*upstream.Token, error) {
	release := make(chan error)
	g.calls <- release
	if err := <-release; err != nil {
		return nil, err
	}
	return g.Fetcher.Fetch(ctx, def, key)
}

func (g *gatedFetcher) next(t *testing.T) chan error {
	t.Helper()
	select {
	case c := <-g.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no fetch started")
		return nil
	}
}

type result struct {
	tok vend.Token
	err error
}

func goToken(v *vend.Vendor, r vend.Request) chan result {
	ch := make(chan result, 1)
	go func() {
		tok, err := v.Token(bg, r)
		ch <- result{tok, err}
	}()
	return ch
}

func testRevokeDuringHeldLeaseNoABA(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	o := vend.Options{DisableRefreshAhead: true, L1MaxAge: -1}
	gateA, gateB := newGate(f.clock), newGate(f.clock)
	a := f.instance(o, nil, gateA)
	b := f.instance(o, nil, gateB)
	resA := goToken(a, req("demo-k2", ""))
	relA := gateA.next(t) // a holds the lease on the cold key and is fetching
	if _, err := f.vendor(o).Revoke(bg, req("demo-k2", "")); err != nil {
		t.Fatal(err)
	}
	resB := goToken(b, req("demo-k2", ""))
	relB := gateB.next(t) // b took a new lease after the revocation
	relA <- nil
	ra := <-resA
	if ra.err != nil {
		t.Fatal(ra.err)
	}
	it, _ := f.store.Get(bg, f.up.Defs["demo-k2"].KeyFor(nil).PK, true)
	if it == nil || it.LeaseOwner == "" || !it.Token.IsZero() {
		t.Fatalf("the pre-revocation holder overwrote the new lease: %+v", it)
	}
	relB <- nil
	rb := <-resB
	if rb.err != nil {
		t.Fatal(rb.err)
	}
	got, err := f.vendor(o).Token(bg, req("demo-k2", ""))
	if err != nil || got.AccessToken != rb.tok.AccessToken || got.Source != vend.FromL2 {
		t.Fatalf("stored token is not the post-revocation holder's (from %s, err %v)", got.Source, err)
	}
}

func testStalledHolderServesTokenStoredMeanwhile(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	o := vend.Options{DisableRefreshAhead: true, L1MaxAge: -1, LeaseDuration: 10 * time.Second}
	gate := newGate(f.clock)
	stalled := f.instance(o, nil, gate)
	res := goToken(stalled, req("demo-k2", ""))
	rel := gate.next(t)
	f.clock.Advance(11 * time.Second) // the holder stalls past its lease
	other, err := f.vendor(o).Token(bg, req("demo-k2", ""))
	if err != nil || other.Source != vend.FromUpstream {
		t.Fatalf("take-over: %v %v", other.Source, err)
	}
	// The holder resumes; its own fetch timed out meanwhile.
	rel <- &upstream.RetrieveError{Provider: "demo-k2", Kind: upstream.Transient, Code: "network_error", Err: context.DeadlineExceeded}
	r := <-res
	if r.err != nil || r.tok.AccessToken != other.AccessToken {
		t.Fatalf("stalled holder refused although a token was stored: %v", r.err)
	}
	// Its timeout was its own stall, not the provider's fault.
	if it, _ := f.store.Get(bg, "cooldown#demo-k2", true); it != nil {
		t.Fatalf("the stalled holder's own timeout opened a cooldown on a healthy provider (until %v)", time.UnixMilli(it.CooldownUntil))
	}
}

func testRetryAfterOnFirst5xxOpensCooldown(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	f.up.Server.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Status: 503, RetryAfter: 30})
	for i := 0; i < 10; i++ {
		_, err := f.vendor(vend.Options{}).Token(bg, req("demo-k2", ""))
		ue, ok := vend.IsUnavailable(err)
		if !ok || ue.RetryAfter < 29*time.Second {
			t.Fatalf("caller %d: want 503 with the provider's Retry-After, got %v", i, err)
		}
	}
	if n := f.requests("demo-k2"); n != 1 {
		t.Fatalf("10 callers made %d upstream requests after a 503 with Retry-After", n)
	}
	f.up.Server.ClearFaults()
	f.clock.Advance(31 * time.Second)
	if _, err := f.vendor(vend.Options{}).Token(bg, req("demo-k2", "")); err != nil {
		t.Fatalf("after the Retry-After: %v", err)
	}
}

func testNetworkErrorsOpenCooldown(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	f.up.Server.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Body: "drop"})
	for i := 0; i < 5; i++ {
		_, err := f.vendor(vend.Options{}).Token(bg, req("demo-k2", ""))
		if _, ok := vend.IsUnavailable(err); !ok {
			t.Fatalf("caller %d: want unavailable, got %v", i, err)
		}
	}
	if n := f.requests("demo-k2"); n != upstream.DefaultMaxAttempts {
		t.Fatalf("5 instances made %d upstream requests to a provider that drops connections; want one fetch (%d attempts)", n, upstream.DefaultMaxAttempts)
	}
}

func testShortLivedTokensRenewOncePerHalfLifetime(t *testing.T, newStore NewStore) {
	for _, lifetime := range []int{30, 60} {
		t.Run(fmt.Sprint(lifetime, "s"), func(t *testing.T) {
			f := newFixture(t, newStore)
			id := fmt.Sprintf("short-%d", lifetime)
			f.up.Server.AddClient(sandbox.Client{ID: id, Secret: "short-secret", Style: sandbox.K2, ExpiresIn: lifetime})
			def := *f.up.Defs["demo-k2"]
			def.Name, def.ClientID, def.ClientSecret = id, id, "short-secret"
			f.provs.Set(&def)
			vs := []*vend.Vendor{f.vendor(vend.Options{}), f.vendor(vend.Options{}), f.vendor(vend.Options{})}
			const duration = 10 * time.Minute
			for step := time.Duration(0); step < duration; step += time.Second {
				if step%time.Minute == 0 {
					if _, err := vs[0].RefreshDue(bg, vend.RefreshOptions{Horizon: time.Minute}); err != nil {
						t.Fatal(err)
					}
				}
				v := vs[int(step/time.Second)%len(vs)]
				tok, err := v.Token(bg, req(id, ""))
				if err != nil {
					t.Fatalf("at %v: %v", step, err)
				}
				if left := tok.ExpiresAt.Sub(f.clock.Now()); left < time.Duration(lifetime)*time.Second/2 {
					t.Fatalf("at %v: vended with %v left", step, left)
				}
				time.Sleep(200 * time.Microsecond) // let background renewals run
				f.clock.Advance(time.Second)
			}
			limit := int(duration/(time.Duration(lifetime)*time.Second/2)) + 1
			if n := f.up.Server.Requests(id); n > limit {
				t.Fatalf("%d s tokens: %d upstream requests in %v over 3 instances, want at most %d", lifetime, n, duration, limit)
			}
		})
	}
}

// flakySealer seals by prefixing, and fails to open while failing is set
// (KMS Decrypt throttled or down).
type flakySealer struct{ failing atomic.Bool }

var errThrottled = errors.New("kms: ThrottlingException: rate exceeded")

func (s *flakySealer) Seal(_ context.Context, p []byte, _, _ map[string]string) ([]byte, error) {
	return append([]byte("sealed:"), p...), nil
}

func (s *flakySealer) Open(_ context.Context, b []byte, _, _ map[string]string) ([]byte, error) {
	if s.failing.Load() {
		return nil, errThrottled
	}
	return b[len("sealed:"):], nil
}

func testUnopenableTokenDoesNotStampede(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	sealer := &flakySealer{}
	o := vend.Options{Sealer: sealer, L1MaxAge: -1, DisableRefreshAhead: true, FallbackRate: 0.001, FallbackBurst: 1}
	if _, err := f.vendor(o).Token(bg, req("demo-k2", "")); err != nil {
		t.Fatal(err)
	}
	sealer.failing.Store(true)
	const instances, calls = 4, 10
	for i := 0; i < instances; i++ {
		v := f.vendor(o)
		for c := 0; c < calls; c++ {
			_, err := v.Token(bg, req("demo-k2", ""))
			if _, unavailable := vend.IsUnavailable(err); err != nil && !unavailable {
				t.Fatalf("want a token or 503, got %v", err)
			}
		}
	}
	// One seed request, then at most the fallback burst per instance.
	if n := f.requests("demo-k2"); n > 1+instances {
		t.Fatalf("a live token that could not be decrypted made %d upstream requests for %d calls", n, instances*calls)
	}
}
