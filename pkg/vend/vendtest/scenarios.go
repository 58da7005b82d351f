package vendtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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

// NewStore makes an empty store for one scenario. clock is nil when the
// scenario runs on the wall clock.
type NewStore func(t *testing.T, clock *Clock) vend.Store

// Run runs every vending scenario against stores from newStore, so each
// behaviour that depends on the store's semantics is proven on every store.
func Run(t *testing.T, newStore NewStore) {
	for name, fn := range map[string]func(*testing.T, NewStore){
		"StampedeAcrossInstancesOneUpstreamRequest": testStampedeAcrossInstancesOneUpstreamRequest,
		"SourcesAndL1MaxAge":                        testSourcesAndL1MaxAge,
		"NeverVendsBelowMinTTL":                     testNeverVendsBelowMinTTL,
		"MinTTLCappedAtHalfLifetime":                testMinTTLCappedAtHalfLifetime,
		"ExpiredRecordIgnored":                      testExpiredRecordIgnored,
		"RefreshAheadDoesNotMakeCallersWait":        testRefreshAheadDoesNotMakeCallersWait,
		"StaleIfErrorThenUnavailable":               testStaleIfErrorThenUnavailable,
		"RateLimitOpensFleetWideCooldown":           testRateLimitOpensFleetWideCooldown,
		"Repeated5xxOpensCooldown":                  testRepeated5xxOpensCooldown,
		"StoreBreakerSkipsDeadStore":                testStoreBreakerSkipsDeadStore,
		"PersistentOutageCooldownGrows":             testPersistentOutageCooldownGrows,
		"PermanentFailureRememberedAndNotRetried":   testPermanentFailureRememberedAndNotRetried,
		"RotatedSecretReReadOnce":                   testRotatedSecretReReadOnce,
		"DeadLeaseHolderTakenOverByOneWaiter":       testDeadLeaseHolderTakenOverByOneWaiter,
		"LostLeaseCannotOverwriteNewerToken":        testLostLeaseCannotOverwriteNewerToken,
		"RevokePurgesAndRevokesUpstream":            testRevokePurgesAndRevokesUpstream,
		"RejectedTokenFlow":                         testRejectedTokenFlow,
		"ForcedRefresh":                             testForcedRefresh,
		"ScopeValidation":                           testScopeValidation,
		"RefresherRenewsDueKeys":                    testRefresherRenewsDueKeys,
	} {
		t.Run(name, func(t *testing.T) { fn(t, newStore) })
	}
	for _, set := range []map[string]func(*testing.T, NewStore){productionScenarios, usageScenarios, cacheKeyScenarios} {
		for name, fn := range set {
			t.Run(name, func(t *testing.T) { fn(t, newStore) })
		}
	}
}

type fixture struct {
	clock *Clock
	up    *Upstream
	provs *Providers
	store vend.Store
}

func newFixture(t *testing.T, newStore NewStore) *fixture {
	clock := NewClock()
	up := NewUpstream(t)
	return &fixture{clock: clock, up: up, provs: NewProviders(up.Defs), store: newStore(t, clock)}
}

// vendor returns a new "instance": own L1 and single-flight, shared store.
func (f *fixture) vendor(o vend.Options) *vend.Vendor { return f.instance(o, nil, nil) }

// instance is vendor with its own store (nil: the fixture's) and fetcher
// (nil: the sandbox client on the fixture's clock).
func (f *fixture) instance(o vend.Options, st vend.Store, fe vend.Fetcher) *vend.Vendor {
	o.Now, o.Sleep = f.clock.Now, f.clock.Sleep
	if st == nil {
		st = f.store
	}
	if fe == nil {
		fe = Client(f.clock)
	}
	return vend.New(f.provs, fe, st, o)
}

func (f *fixture) requests(provider string) int {
	return f.up.Server.Requests(f.up.Defs[provider].ClientID)
}

func sha(tok string) string {
	s := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(s[:])
}

var bg = context.Background()

func req(p, scope string) vend.Request { return vend.Request{Provider: p, Scope: scope, MinTTL: -1} }

func testStampedeAcrossInstancesOneUpstreamRequest(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	const instances, callers = 8, 50
	var wg sync.WaitGroup
	tokens := make(chan string, instances*callers)
	for i := 0; i < instances; i++ {
		v := f.vendor(vend.Options{DisableRefreshAhead: true})
		for c := 0; c < callers; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := v.Token(bg, req("demo-k2", ""))
				if err != nil {
					t.Error(err)
					return
				}
				tokens <- tok.AccessToken
			}()
		}
	}
	wg.Wait()
	close(tokens)
	seen := map[string]int{}
	for tok := range tokens {
		seen[tok]++
	}
	if n := f.requests("demo-k2"); n != 1 || len(seen) != 1 {
		t.Fatalf("upstream requests %d, distinct tokens %d", n, len(seen))
	}
}

func testSourcesAndL1MaxAge(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{DisableRefreshAhead: true})
	t1, err := v.Token(bg, req("demo-dot", "read write"))
	if err != nil || t1.Source != vend.FromUpstream || t1.Scope != "read write" || t1.TokenType != "Bearer" {
		t.Fatalf("%+v %v", t1, err)
	}
	if t1.ExpiresAt != f.clock.Now().Add(36000*time.Second) {
		t.Fatalf("expiry must be request time + expires_in: %v", t1.ExpiresAt)
	}
	t2, _ := v.Token(bg, req("demo-dot", "read write"))
	if t2.Source != vend.FromL1 || t2.AccessToken != t1.AccessToken {
		t.Fatalf("second call: %+v", t2)
	}
	// Same scope set spelled differently: another L1 entry, same cached token.
	t3, _ := v.Token(bg, req("demo-dot", "write read"))
	if t3.Source != vend.FromL2 || t3.AccessToken != t1.AccessToken {
		t.Fatalf("reordered scope: %+v", t3)
	}
	f.clock.Advance(15 * time.Second)
	t4, _ := v.Token(bg, req("demo-dot", "read write"))
	if t4.Source != vend.FromL2 {
		t.Fatalf("L1 entry older than L1_MAX_AGE was used: %+v", t4)
	}
	if n := f.requests("demo-dot"); n != 1 {
		t.Fatalf("upstream requests %d", n)
	}
}

func testNeverVendsBelowMinTTL(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{DisableRefreshAhead: true})
	first, _ := v.Token(bg, req("demo-k2", ""))
	// Walk through the token's life: every vended token has >= min_ttl left.
	for step := 0; step < 80; step++ {
		f.clock.Advance(50 * time.Second)
		for _, minTTL := range []time.Duration{0, 60 * time.Second, 300 * time.Second} {
			tok, err := v.Token(bg, vend.Request{Provider: "demo-k2", MinTTL: minTTL})
			if err != nil {
				t.Fatal(err)
			}
			if left := tok.ExpiresAt.Sub(f.clock.Now()); left < minTTL || left <= 0 {
				t.Fatalf("vended a token with %v left, min_ttl %v", left, minTTL)
			}
		}
	}
	if n := f.requests("demo-k2"); n < 2 {
		t.Fatalf("token never renewed: %d requests (first expired %v)", n, first.ExpiresAt)
	}
}

func testMinTTLCappedAtHalfLifetime(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	for i := 0; i < 5; i++ {
		if _, err := v.Token(bg, vend.Request{Provider: "demo-k2", MinTTL: 3000 * time.Second}); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.requests("demo-k2"); n != 1 {
		t.Fatalf("min_ttl above half the lifetime forced %d fetches", n)
	}
	if _, err := v.Token(bg, vend.Request{Provider: "demo-k2", MinTTL: 25 * time.Hour}); !errors.Is(err, vend.ErrInvalidRequest) {
		t.Fatalf("min_ttl out of range: %v", err)
	}
}

func testExpiredRecordIgnored(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	old, _ := v.Token(bg, req("demo-mobi", ""))
	f.clock.Advance(2 * time.Hour) // the record is still in the store, past expires_at
	tok, err := v.Token(bg, vend.Request{Provider: "demo-mobi", MinTTL: 0})
	if err != nil || tok.AccessToken == old.AccessToken || f.requests("demo-mobi") != 2 {
		t.Fatalf("expired record served: %+v %v", tok, err)
	}
}

func testRefreshAheadDoesNotMakeCallersWait(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{L1MaxAge: -1})
	first, _ := v.Token(bg, req("demo-k2", ""))
	f.clock.Advance(3600*time.Second - 11*time.Minute) // past refresh_at (expiry − 12 min), above min_ttl
	got, err := v.Token(bg, req("demo-k2", ""))
	if err != nil || got.AccessToken != first.AccessToken {
		t.Fatalf("caller should get the cached token at once: %+v %v", got, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.requests("demo-k2") < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	next, _ := v.Token(bg, req("demo-k2", ""))
	if f.requests("demo-k2") != 2 || next.AccessToken == first.AccessToken {
		t.Fatalf("background renewal: %d requests, token renewed %v", f.requests("demo-k2"), next.AccessToken != first.AccessToken)
	}
}

func testStaleIfErrorThenUnavailable(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{L1MaxAge: -1})
	first, _ := v.Token(bg, req("demo-k2", ""))
	f.up.Server.SetFault(sandbox.Fault{Status: 503})
	errorsSeen, okCalls := 0, 0
	for i := 0; i < 400; i++ {
		f.clock.Advance(10 * time.Second)
		tok, err := v.Token(bg, req("demo-k2", ""))
		left := first.ExpiresAt.Sub(f.clock.Now())
		if left >= 60*time.Second {
			if err != nil {
				t.Fatalf("error while a valid token (%v left) is cached: %v", left, err)
			}
			if tok.ExpiresAt.Sub(f.clock.Now()) < 60*time.Second {
				t.Fatal("vended below min_ttl")
			}
			okCalls++
			continue
		}
		ue, ok := vend.IsUnavailable(err)
		if !ok || ue.RetryAfter <= 0 {
			t.Fatalf("with %v left want unavailable + Retry-After, got %+v %v", left, tok, err)
		}
		errorsSeen++
		if errorsSeen > 3 {
			break
		}
	}
	if okCalls == 0 || errorsSeen == 0 {
		t.Fatalf("ok %d errors %d", okCalls, errorsSeen)
	}
	it, _ := f.store.Get(bg, f.up.Defs["demo-k2"].KeyFor(nil).PK, true)
	if it.LastError == "" {
		t.Fatal("failure not recorded on the record")
	}
}

func testRateLimitOpensFleetWideCooldown(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	a := f.vendor(vend.Options{})
	b := f.vendor(vend.Options{})
	f.up.Server.SetFault(sandbox.Fault{Status: 429, RetryAfter: 30})
	_, err := a.Token(bg, req("demo-k2", ""))
	ue, ok := vend.IsUnavailable(err)
	if !ok || ue.RetryAfter < 30*time.Second {
		t.Fatalf("429: %v", err)
	}
	n := f.requests("demo-k2")
	for i := 0; i < 5; i++ {
		f.clock.Advance(5 * time.Second)
		if _, err := b.Token(bg, req("demo-k2", "")); err == nil {
			t.Fatal("vended during cooldown with no cached token")
		}
	}
	if f.requests("demo-k2") != n {
		t.Fatalf("provider called during cooldown: %d -> %d", n, f.requests("demo-k2"))
	}
	f.up.Server.ClearFaults()
	f.clock.Advance(6 * time.Second)
	if _, err := b.Token(bg, req("demo-k2", "")); err != nil {
		t.Fatalf("after cooldown: %v", err)
	}
}

func testPersistentOutageCooldownGrows(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{ServerErrorCooldown: 10 * time.Second})
	f.up.Server.SetFault(sandbox.Fault{Status: 503})
	var fetchAt []time.Time
	start := f.clock.Now()
	for f.clock.Now().Before(start.Add(20 * time.Minute)) {
		before := f.requests("demo-k2")
		v.Token(bg, req("demo-k2", ""))
		if f.requests("demo-k2") > before {
			fetchAt = append(fetchAt, f.clock.Now())
		}
		f.clock.Advance(time.Second)
	}
	if len(fetchAt) < 4 || len(fetchAt) > 30 {
		t.Fatalf("%d fetch sequences in 20 minutes of outage", len(fetchAt))
	}
	for i := 2; i < len(fetchAt); i++ {
		gap, prev := fetchAt[i].Sub(fetchAt[i-1]), fetchAt[i-1].Sub(fetchAt[i-2])
		if gap < prev && gap < time.Minute {
			t.Fatalf("cooldown shrank during the outage: gaps %v then %v", prev, gap)
		}
		if gap > time.Minute+2*time.Second {
			t.Fatalf("cooldown above its 60 s cap: %v", gap)
		}
	}
}

// deadStore fails every call and counts them.
type deadStore struct {
	vend.Store
	calls atomic.Int32
}

func (d *deadStore) Get(context.Context, string, bool) (*store.Item, error) {
	d.calls.Add(1)
	return nil, errors.New("connection refused")
}

func testStoreBreakerSkipsDeadStore(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	dead := &deadStore{Store: f.store}
	v := vend.New(f.provs, Client(f.clock), dead, vend.Options{L1MaxAge: -1, StoreRetryAfter: 300 * time.Millisecond, FallbackBurst: 100, FallbackRate: 100})
	for i := 0; i < 10; i++ {
		if _, err := v.Token(bg, req("demo-k2", "")); err != nil {
			t.Fatal(err)
		}
	}
	if n := dead.calls.Load(); n != 1 {
		t.Fatalf("the dead store was called %d times while the breaker was open", n)
	}
	time.Sleep(350 * time.Millisecond)
	v.Token(bg, req("demo-k2", ""))
	if n := dead.calls.Load(); n != 2 {
		t.Fatalf("the store was not tried again after StoreRetryAfter: %d calls", n)
	}
}

func testRepeated5xxOpensCooldown(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{ServerErrorCooldown: 20 * time.Second})
	f.up.Server.SetFault(sandbox.Fault{Status: 505, ClientID: "demo-mobi-client"})
	if _, err := v.Token(bg, req("demo-mobi", "")); err == nil {
		t.Fatal("want failure")
	}
	n := f.requests("demo-mobi")
	if n != 3 {
		t.Fatalf("transient 505 should be retried: %d attempts", n)
	}
	f.clock.Advance(10 * time.Second)
	_, err := v.Token(bg, req("demo-mobi", ""))
	if _, ok := vend.IsUnavailable(err); !ok || f.requests("demo-mobi") != n {
		t.Fatalf("cooldown not honoured: %v, requests %d", err, f.requests("demo-mobi"))
	}
}

func testPermanentFailureRememberedAndNotRetried(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{})
	_, err := v.Token(bg, req("demo-k2", "")) // warm nothing; then break the registration
	if err != nil {
		t.Fatal(err)
	}
	bad := *f.up.Defs["demo-dot"]
	bad.AllowedScopes = nil // let the vendor ask for a scope the provider refuses
	f.provs.Set(&bad)
	_, err = v.Token(bg, req("demo-dot", "payments"))
	re, ok := upstream.AsRetrieveError(err)
	if !ok || re.Code != "invalid_scope" || re.Kind != upstream.Permanent {
		t.Fatalf("got %v", err)
	}
	n := f.requests("demo-dot")
	if n != 1 {
		t.Fatalf("invalid_scope retried: %d", n)
	}
	for i := 0; i < 3; i++ {
		f.clock.Advance(5 * time.Second)
		_, err = v.Token(bg, req("demo-dot", "payments"))
		if re, ok := upstream.AsRetrieveError(err); !ok || re.Code != "invalid_scope" {
			t.Fatalf("remembered failure: %v", err)
		}
	}
	if f.requests("demo-dot") != 1 {
		t.Fatalf("broken registration hammered the provider: %d", f.requests("demo-dot"))
	}
	f.clock.Advance(30 * time.Second)
	v.Token(bg, req("demo-dot", "payments"))
	if f.requests("demo-dot") != 2 {
		t.Fatalf("after the memory window a new attempt is made: %d", f.requests("demo-dot"))
	}
}

func testRotatedSecretReReadOnce(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	if err := f.up.Server.Rotate("demo-k2-client", "rotated-secret"); err != nil {
		t.Fatal(err)
	}
	rotated := *f.up.Defs["demo-k2"]
	rotated.ClientSecret = "rotated-secret"
	// The registry still serves the old secret from its cache; Reload sees the new one.
	stale := &reloadingSource{Providers: f.provs, fresh: &rotated}
	v := vend.New(stale, Client(f.clock), f.store, vend.Options{Now: f.clock.Now, Sleep: f.clock.Sleep})
	tok, err := v.Token(bg, req("demo-k2", ""))
	if err != nil || !f.up.Server.Valid(tok.AccessToken) {
		t.Fatalf("rotation: %v", err)
	}
	if stale.reloads != 1 || f.requests("demo-k2") != 2 {
		t.Fatalf("reloads %d requests %d", stale.reloads, f.requests("demo-k2"))
	}
}

type reloadingSource struct {
	*Providers
	fresh   *provider.Definition
	reloads int
}

func (r *reloadingSource) Reload(context.Context, string) (*provider.Definition, error) {
	r.reloads++
	if err := r.fresh.Validate(); err != nil {
		return nil, err
	}
	return r.fresh, nil
}

func testDeadLeaseHolderTakenOverByOneWaiter(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	key := f.up.Defs["demo-k2"].KeyFor(nil)
	// A holder that took the lease and died: nobody will ever release it.
	dead := &store.Item{PK: key.PK, Provider: "demo-k2", Version: 7, LeaseOwner: "dead/1",
		LeaseUntilMS: f.clock.Now().Add(25 * time.Second).UnixMilli(), ExpiresAt: f.clock.Now().Add(time.Hour).Unix()}
	if err := f.store.Put(bg, dead, 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		v := f.vendor(vend.Options{})
		for c := 0; c < 10; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := v.Token(bg, req("demo-k2", "")); err != nil {
					t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	if n := f.requests("demo-k2"); n != 1 {
		t.Fatalf("take-over made %d upstream requests", n)
	}
}

func testLostLeaseCannotOverwriteNewerToken(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	o := vend.Options{LeaseDuration: 10 * time.Second, L1MaxAge: -1, DisableRefreshAhead: true}
	gate := newGate(f.clock)
	resA := goToken(f.instance(o, nil, gate), req("demo-k2", ""))
	rel := gate.next(t)               // a holds the lease and is fetching
	f.clock.Advance(11 * time.Second) // a stalls past its lease
	tb, err := f.vendor(o).Token(bg, req("demo-k2", ""))
	if err != nil || tb.Source != vend.FromUpstream {
		t.Fatalf("take-over: %v %v", tb.Source, err)
	}
	rel <- nil // a's fetch completes late, with a token of its own
	ra := <-resA
	if ra.err != nil {
		t.Fatal(ra.err)
	}
	tc, _ := f.vendor(o).Token(bg, req("demo-k2", ""))
	if ra.tok.AccessToken == tb.AccessToken || tc.AccessToken != tb.AccessToken {
		t.Fatalf("the late writer overwrote the newer token (a=%v b=%v stored=%v)", ra.tok.AccessToken[:8], tb.AccessToken[:8], tc.AccessToken[:8])
	}
}

func testRevokePurgesAndRevokesUpstream(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{})
	tok, _ := v.Token(bg, req("demo-k2", ""))
	res, err := v.Revoke(bg, req("demo-k2", ""))
	if err != nil || !res.RevokedUpstream || !res.Purged {
		t.Fatalf("%+v %v", res, err)
	}
	if f.up.Server.Valid(tok.AccessToken) {
		t.Fatal("not revoked at the provider")
	}
	if it, _ := f.store.Get(bg, f.up.Defs["demo-k2"].KeyFor(nil).PK, true); it == nil || !it.Token.IsZero() || it.Version <= 1 {
		t.Fatalf("not purged from the store, or its version was reset: %+v", it)
	}
	next, _ := v.Token(bg, req("demo-k2", ""))
	if next.AccessToken == tok.AccessToken || next.Source != vend.FromUpstream {
		t.Fatalf("revoked token still vended from %s", next.Source)
	}
	// Mobi has no revoke_url: purge only.
	v.Token(bg, req("demo-mobi", ""))
	res, err = v.Revoke(bg, req("demo-mobi", ""))
	if err != nil || res.RevokedUpstream || !res.Purged {
		t.Fatalf("mobi: %+v %v", res, err)
	}
}

func testRejectedTokenFlow(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	a, b := f.vendor(vend.Options{}), f.vendor(vend.Options{})
	t1, _ := a.Token(bg, req("demo-k2", ""))
	b.Token(bg, req("demo-k2", "")) // b has it in L1 too
	// Two instances report the same rejected token at once: one new fetch.
	var wg sync.WaitGroup
	got := make([]vend.Token, 2)
	for i, v := range []*vend.Vendor{a, b} {
		wg.Add(1)
		go func(i int, v *vend.Vendor) {
			defer wg.Done()
			var err error
			if got[i], err = v.Rejected(bg, req("demo-k2", ""), sha(t1.AccessToken)); err != nil {
				t.Error(err)
			}
		}(i, v)
	}
	wg.Wait()
	if f.requests("demo-k2") != 2 || got[0].AccessToken != got[1].AccessToken || got[0].AccessToken == t1.AccessToken {
		t.Fatalf("requests %d, tokens differ %v, same as rejected %v", f.requests("demo-k2"), got[0].AccessToken != got[1].AccessToken, got[0].AccessToken == t1.AccessToken)
	}
	// b's L1 no longer hands out the rejected token.
	if tb, _ := b.Token(bg, req("demo-k2", "")); tb.AccessToken == t1.AccessToken {
		t.Fatal("rejected token still in L1")
	}
	// Reporting the old token again: the newer one, no upstream call.
	again, err := a.Rejected(bg, req("demo-k2", ""), sha(t1.AccessToken))
	if err != nil || again.AccessToken != got[0].AccessToken || f.requests("demo-k2") != 2 {
		t.Fatalf("stale report: %v requests %d", err, f.requests("demo-k2"))
	}
	// The new token rejected too within 30 s: no third fetch.
	_, err = a.Rejected(bg, req("demo-k2", ""), sha(got[0].AccessToken))
	if ue, ok := vend.IsUnavailable(err); !ok || ue.RetryAfter <= 0 || f.requests("demo-k2") != 2 {
		t.Fatalf("rate limit on rejections: %v, requests %d", err, f.requests("demo-k2"))
	}
	f.clock.Advance(31 * time.Second)
	t3, err := a.Rejected(bg, req("demo-k2", ""), sha(got[0].AccessToken))
	if err != nil || t3.AccessToken == got[0].AccessToken || f.requests("demo-k2") != 3 {
		t.Fatalf("after the window: %v requests %d", err, f.requests("demo-k2"))
	}
	if _, err := a.Rejected(bg, req("demo-k2", ""), "not-hex"); !errors.Is(err, vend.ErrInvalidRequest) {
		t.Fatalf("bad sha: %v", err)
	}
}

func testForcedRefresh(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{})
	t1, _ := v.Token(bg, req("demo-dot", ""))
	f.clock.Advance(time.Second)
	t2, err := v.Refresh(bg, req("demo-dot", ""))
	if err != nil || t2.AccessToken == t1.AccessToken || f.requests("demo-dot") != 2 {
		t.Fatalf("%v requests %d", err, f.requests("demo-dot"))
	}
	if t3, _ := v.Token(bg, req("demo-dot", "")); t3.AccessToken != t2.AccessToken {
		t.Fatal("forced refresh did not replace the cached token")
	}
	// Another forced refresh within 30 s gets the token the first fetched,
	// from every instance: one forced upstream request per key per 30 s.
	other := f.vendor(vend.Options{})
	for _, inst := range []*vend.Vendor{v, other} {
		if t5, err := inst.Refresh(bg, req("demo-dot", "")); err != nil || t5.AccessToken != t2.AccessToken || f.requests("demo-dot") != 2 {
			t.Fatalf("forced refresh within 30 s: %v requests %d", err, f.requests("demo-dot"))
		}
	}
	f.clock.Advance(31 * time.Second)
	f.up.Server.SetFault(sandbox.Fault{Status: 503})
	if _, err := v.Refresh(bg, req("demo-dot", "")); err == nil {
		t.Fatal("a forced refresh that could not fetch must fail")
	}
	if t4, err := v.Token(bg, req("demo-dot", "")); err != nil || t4.AccessToken != t2.AccessToken {
		t.Fatalf("failed forced refresh must leave the cached token: %v", err)
	}
}

func testScopeValidation(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{})
	if _, err := v.Token(bg, req("demo-dot", "admin payments")); !errors.Is(err, provider.ErrScopeNotAllowed) {
		t.Fatalf("got %v", err)
	}
	if _, err := v.Token(bg, req("demo-dot", "read\nwrite")); !errors.Is(err, vend.ErrInvalidRequest) {
		t.Fatalf("got %v", err)
	}
	if _, err := v.Token(bg, req("nope", "")); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("got %v", err)
	}
	if f.up.Server.Stats().Total != 0 {
		t.Fatal("bad requests reached the provider")
	}
	if items, _, _ := f.store.ScanPage(bg, store.Filter{}, "", 100); len(items) != 0 {
		t.Fatal("bad requests left records")
	}
}

func testRefresherRenewsDueKeys(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	v := f.vendor(vend.Options{DisableRefreshAhead: true, RefreshJitter: time.Second})
	t1, _ := v.Token(bg, req("demo-k2", ""))
	v.Token(bg, req("demo-dot", "read"))
	res, err := v.RefreshDue(bg, vend.RefreshOptions{Horizon: time.Minute})
	if err != nil || res != (vend.RefreshResult{}) {
		t.Fatalf("nothing due yet: %+v %v", res, err)
	}
	f.clock.Advance(3600*time.Second - 12*time.Minute) // K2 (1 h) due within a minute; DOT (10 h) not
	res, err = v.RefreshDue(bg, vend.RefreshOptions{Horizon: time.Minute})
	if err != nil || res.Refreshed != 1 || res.Failed != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	f.clock.Advance(16 * time.Second) // past L1 max age
	t2, _ := v.Token(bg, req("demo-k2", ""))
	if t2.AccessToken == t1.AccessToken || t2.Source != vend.FromL2 {
		t.Fatalf("caller after refresh: %+v", t2)
	}
	res, _ = v.RefreshDue(bg, vend.RefreshOptions{Providers: []string{"demo-dot"}, Force: true})
	if res.Refreshed != 1 || f.requests("demo-dot") != 2 {
		t.Fatalf("forced: %+v", res)
	}
	f.provs.Delete("demo-dot")
	res, _ = v.RefreshDue(bg, vend.RefreshOptions{Force: true})
	// A removed provider's key can never be renewed: retired (out of the
	// refresh index), not counted as due.
	if res.Retired != 1 || res.Refreshed != 1 || res.Due != 1 {
		t.Fatalf("removed provider: %+v", res)
	}
	keys, _, _ := v.Keys(bg, nil, "", 0)
	if len(keys["demo-k2"]) != 1 || keys["demo-k2"][0].ExpiresAt.IsZero() {
		t.Fatalf("keys %+v", keys)
	}
}
