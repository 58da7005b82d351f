package vendtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// usageScenarios: cost that grows with use, not with the table (issue 12).
var usageScenarios = map[string]func(*testing.T, NewStore){
	"UsageRecordedWithoutAWritePerVend":      testUsageRecordedWithoutAWritePerVend,
	"IdleKeysRetireAndComeBackCold":          testIdleKeysRetireAndComeBackCold,
	"RetiredKeyUsedAgainIsRenewedAgain":      testRetiredKeyUsedAgainIsRenewedAgain,
	"ProviderIdleAfterOverridesDefault":      testProviderIdleAfterOverridesDefault,
	"RefresherConfirmsWhatALaggingIndexSays": testRefresherConfirmsLaggingIndex,
	"KeysPerProviderBounded":                 testKeysPerProviderBounded,
	"KeyLimitHoldsForDeadRecords":            testKeyLimitHoldsForDeadRecords,
	"RefusedRecordIsNotAnOutage":             testRefusedRecordIsNotAnOutage,
	"ResourceAndAudienceInTheKey":            testResourceAndAudienceInTheKey,
}

// writeCounter counts writes that landed and writes attempted.
type writeCounter struct {
	vend.Store
	mu              sync.Mutex
	attempts, wrote int
}

func (c *writeCounter) Put(ctx context.Context, it *store.Item, expect int64) error {
	err := c.Store.Put(ctx, it, expect)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.attempts++
	if err == nil {
		c.wrote++
	}
	return err
}

func (c *writeCounter) counts() (attempts, wrote int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attempts, c.wrote
}

func testUsageRecordedWithoutAWritePerVend(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	o := vend.Options{DisableRefreshAhead: true, IdleAfter: 2 * time.Hour} // usage interval max(5 min, 1 h/10, 2 h/24) = 6 min
	var counters []*writeCounter
	var vs []*vend.Vendor
	for i := 0; i < 3; i++ {
		c := &writeCounter{Store: f.store}
		counters = append(counters, c)
		vs = append(vs, f.instance(o, c, nil))
	}
	writes := func() (attempts, wrote int) {
		for _, c := range counters {
			a, w := c.counts()
			attempts, wrote = attempts+a, wrote+w
		}
		return
	}
	pk := f.up.Defs["demo-k2"].KeyFor(nil).PK
	if _, err := vs[0].Token(bg, req("demo-k2", "")); err != nil {
		t.Fatal(err)
	}
	it, _ := f.store.Get(bg, pk, true)
	if it.LastUsedAt != f.clock.Now().Unix() {
		t.Fatalf("a caller's fetch must record its use: last_used_at %d, now %d", it.LastUsedAt, f.clock.Now().Unix())
	}
	base, _ := writes()
	// L1 and L2 hits within the usage interval write nothing.
	for step := 0; step < 20; step++ {
		for _, v := range vs {
			if _, err := v.Token(bg, req("demo-k2", "")); err != nil {
				t.Fatal(err)
			}
		}
		f.clock.Advance(16 * time.Second)
	}
	if a, _ := writes(); a != base {
		t.Fatalf("%d writes for reads within the usage interval", a-base)
	}
	f.clock.Advance(7 * time.Minute)
	// Every instance's read finds the usage stale; none writes on its own read.
	for _, v := range vs {
		if tok, err := v.Token(bg, req("demo-k2", "")); err != nil || tok.Source != vend.FromL2 {
			t.Fatalf("%v %v", tok.Source, err)
		}
	}
	if a, _ := writes(); a != base {
		t.Fatalf("a usage write on the read that noticed it: %d writes", a-base)
	}
	f.clock.Advance(16 * time.Second)
	// Their next reads carry the writes: one lands, fleet-wide.
	for _, v := range vs {
		if _, err := v.Token(bg, req("demo-k2", "")); err != nil {
			t.Fatal(err)
		}
	}
	attempts, wrote := writes()
	if wrote-base != 1 || attempts-base > len(vs) {
		t.Fatalf("usage writes: %d landed (want 1), %d attempted (want ≤ %d)", wrote-base, attempts-base, len(vs))
	}
	after, _ := f.store.Get(bg, pk, true)
	if after.LastUsedAt < f.clock.Now().Add(-20*time.Second).Unix() {
		t.Fatalf("last_used_at not moved: %v", time.Unix(after.LastUsedAt, 0))
	}
	if n := f.requests("demo-k2"); n != 1 {
		t.Fatalf("%d upstream requests", n)
	}
}

// refreshHourly runs the refresher every hour for hours, as the schedule
// would (an hour's horizon stands for the minute-by-minute runs).
func refreshHourly(t *testing.T, f *fixture, v *vend.Vendor, hours int) vend.RefreshResult {
	t.Helper()
	var total vend.RefreshResult
	for h := 0; h < hours; h++ {
		f.clock.Advance(time.Hour)
		res, err := v.RefreshDue(bg, vend.RefreshOptions{Horizon: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		total.Refreshed += res.Refreshed
		total.Retired += res.Retired
		total.Failed += res.Failed
	}
	return total
}

func testIdleKeysRetireAndComeBackCold(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	o := vend.Options{DisableRefreshAhead: true, IdleAfter: 24 * time.Hour}
	refresher := f.vendor(o)
	if _, err := f.vendor(o).Token(bg, req("demo-k2", "")); err != nil {
		t.Fatal(err)
	}
	got := refreshHourly(t, f, refresher, 23)
	if got.Retired != 0 || got.Refreshed < 20 {
		t.Fatalf("within IDLE_AFTER the key is renewed: %+v", got)
	}
	got = refreshHourly(t, f, refresher, 2)
	if got.Retired != 1 {
		t.Fatalf("after IDLE_AFTER the key is retired once: %+v", got)
	}
	before := f.requests("demo-k2")
	got = refreshHourly(t, f, refresher, 48)
	if got.Refreshed != 0 || got.Retired != 0 || f.requests("demo-k2") != before {
		t.Fatalf("a retired key is not renewed or read again: %+v, %d upstream requests", got, f.requests("demo-k2")-before)
	}
	// Long expired: asked for again, it is fetched as a cold key, once.
	for i := 0; i < 3; i++ {
		tok, err := f.vendor(o).Token(bg, req("demo-k2", ""))
		if err != nil || (i == 0) != (tok.Source == vend.FromUpstream) {
			t.Fatalf("call %d after retirement: %v %v", i, tok.Source, err)
		}
	}
	if n := f.requests("demo-k2") - before; n != 1 {
		t.Fatalf("%d upstream requests for the returning key", n)
	}
	if got := refreshHourly(t, f, refresher, 1); got.Refreshed != 1 {
		t.Fatalf("the returning key is renewed again: %+v", got)
	}
}

func testRetiredKeyUsedAgainIsRenewedAgain(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	o := vend.Options{DisableRefreshAhead: true, IdleAfter: 2 * time.Hour}
	refresher := f.vendor(o)
	// DOT tokens live 10 h: a retired one is still usable for hours.
	if _, err := f.vendor(o).Token(bg, req("demo-dot", "read")); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(8 * time.Hour)
	if got := refreshHourly(t, f, refresher, 1); got.Retired != 1 {
		t.Fatalf("idle key not retired: %+v", got)
	}
	caller := f.vendor(o)
	if tok, err := caller.Token(bg, req("demo-dot", "read")); err != nil || tok.Source != vend.FromL2 {
		t.Fatalf("a retired key's live token is still vended: %v %v", tok.Source, err)
	}
	f.clock.Advance(16 * time.Second)
	caller.Token(bg, req("demo-dot", "read")) // carries the usage write
	pk := f.up.Defs["demo-dot"].KeyFor([]string{"read"}).PK
	if it, _ := f.store.Get(bg, pk, true); it.RetiredAt != 0 {
		t.Fatal("a used key stays retired")
	}
	if got := refreshHourly(t, f, refresher, 1); got.Refreshed != 1 {
		t.Fatalf("a key used again is renewed again: %+v", got)
	}
}

func testProviderIdleAfterOverridesDefault(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := *f.up.Defs["demo-k2"]
	def.IdleAfterSeconds = 3 * 3600
	f.provs.Set(&def)
	refresher := f.vendor(vend.Options{DisableRefreshAhead: true, IdleAfter: 24 * time.Hour})
	f.vendor(vend.Options{}).Token(bg, req("demo-k2", ""))
	f.vendor(vend.Options{}).Token(bg, req("demo-mobi", ""))
	got := refreshHourly(t, f, refresher, 4)
	if got.Retired != 1 {
		t.Fatalf("demo-k2 (idle_after_seconds 3 h) retired, demo-mobi (24 h) not: %+v", got)
	}
}

// laggingIndex answers Due with what the index said earlier, as an
// eventually consistent index may.
type laggingIndex struct {
	vend.Store
	snapshot []*store.Item
}

func (l *laggingIndex) Due(context.Context, time.Time, []int) ([]*store.Item, error) {
	return l.snapshot, nil
}

func testRefresherConfirmsLaggingIndex(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	o := vend.Options{DisableRefreshAhead: true}
	caller := f.vendor(o)
	for _, s := range []string{"a", "b"} {
		if _, err := caller.Token(bg, req("demo-k2", s)); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.Advance(50 * time.Minute) // both due within the next run's horizon
	snap, err := f.store.Due(bg, f.clock.Now().Add(2*time.Minute), nil)
	if err != nil || len(snap) != 2 {
		t.Fatalf("index: %d due, %v", len(snap), err)
	}
	// Meanwhile "a" is renewed (a forced refresh), and the index has not caught up.
	if _, err := caller.Refresh(bg, req("demo-k2", "a")); err != nil {
		t.Fatal(err)
	}
	before := f.requests("demo-k2")
	lagging := f.instance(o, &laggingIndex{Store: f.store, snapshot: snap}, nil)
	res, err := lagging.RefreshDue(bg, vend.RefreshOptions{Horizon: time.Minute})
	if err != nil || res.Refreshed != 1 || res.Skipped != 1 {
		t.Fatalf("want b renewed and a skipped after its consistent read: %+v %v", res, err)
	}
	if n := f.requests("demo-k2") - before; n != 1 {
		t.Fatalf("%d upstream requests; the stale index entry must not cause a fetch", n)
	}
}

func testKeysPerProviderBounded(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := *f.up.Defs["demo-k2"] // no allowed_scopes
	def.MaxKeys = 3
	f.provs.Set(&def)
	o := vend.Options{DisableRefreshAhead: true}
	for _, s := range []string{"a", "b c", "x"} {
		if _, err := f.vendor(o).Token(bg, req("demo-k2", s)); err != nil {
			t.Fatal(err)
		}
	}
	before := f.requests("demo-k2")
	_, err := f.vendor(o).Token(bg, req("demo-k2", "d"))
	if !errors.Is(err, provider.ErrKeyLimit) || !strings.Contains(err.Error(), "max_keys 3") {
		t.Fatalf("a fourth scope set: want the key limit naming max_keys, got %v", err)
	}
	if n := f.requests("demo-k2") - before; n != 0 {
		t.Fatalf("%d upstream requests for a refused key", n)
	}
	if it, _ := f.store.Get(bg, def.KeyFor([]string{"d"}).PK, true); it != nil {
		t.Fatalf("a refused key left a record: %+v", it)
	}
	// Scope sets are normalized: the same set in another order is a key in use.
	if _, err := f.vendor(o).Token(bg, req("demo-k2", "c b")); err != nil {
		t.Fatalf("a key already in use is still vended: %v", err)
	}
	// Other providers have their own count; allowed_scopes bound keys already.
	if _, err := f.vendor(o).Token(bg, req("demo-mobi", "z")); err != nil {
		t.Fatalf("another provider: %v", err)
	}
	if _, err := f.vendor(o).Token(bg, req("demo-dot", "read")); err != nil {
		t.Fatal(err)
	}
	if it, _ := f.store.Get(bg, "keys#demo-dot", true); it != nil {
		t.Fatal("a provider with allowed_scopes needs no key count")
	}
	// Once the old keys have expired (TTL), new scope sets are admitted again.
	f.clock.Advance(3 * time.Hour)
	if _, err := f.vendor(o).Token(bg, req("demo-k2", "d")); err != nil {
		t.Fatalf("after the old keys expired: %v", err)
	}
}

// testKeyLimitHoldsForDeadRecords: keys whose records outlived their token
// (revocation tombstones, here) are not members once pruned; asking for
// them again must pass admission like any new key, or max_keys is bypassed.
func testKeyLimitHoldsForDeadRecords(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := *f.up.Defs["demo-k2"]
	def.MaxKeys = 3
	f.provs.Set(&def)
	v := f.vendor(vend.Options{DisableRefreshAhead: true})
	first, later := []string{"a", "b", "c"}, []string{"d", "e", "f"}
	for _, s := range first {
		if _, err := v.Token(bg, req("demo-k2", s)); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Revoke(bg, req("demo-k2", s)); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.Advance(2 * time.Minute) // the full record may be checked again
	for _, s := range later {
		if _, err := v.Token(bg, req("demo-k2", s)); err != nil {
			t.Fatalf("after the first keys were revoked: %v", err)
		}
	}
	for _, s := range first {
		if _, err := v.Token(bg, req("demo-k2", s)); !errors.Is(err, provider.ErrKeyLimit) {
			t.Fatalf("a revoked key asked for again past max_keys: want key_limit_reached, got %v", err)
		}
	}
	live := 0
	for _, s := range append(first, later...) {
		it, _ := f.store.Get(bg, def.KeyFor([]string{s}).PK, true)
		if it != nil && !it.Token.IsZero() && f.clock.Now().Before(it.Expiry()) {
			live++
		}
	}
	if live != 3 {
		t.Fatalf("%d live keys with max_keys 3", live)
	}
}

// rejectingStore refuses every write of one record, as DynamoDB refuses an
// item over 400 KB, and counts what reaches it.
type rejectingStore struct {
	vend.Store
	pk     string
	mu     sync.Mutex
	writes int
}

func (r *rejectingStore) Put(ctx context.Context, it *store.Item, expect int64) error {
	r.mu.Lock()
	r.writes++
	r.mu.Unlock()
	if it.PK == r.pk {
		return fmt.Errorf("dynamodb put: %w: ValidationException: Item size has exceeded the maximum allowed size", store.ErrRejected)
	}
	return r.Store.Put(ctx, it, expect)
}

// testRefusedRecordIsNotAnOutage: a record the store refuses fails that
// request with a clear error; it neither opens the instance's store breaker
// (a healthy provider keeps using the store) nor vends around the store.
func testRefusedRecordIsNotAnOutage(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	rs := &rejectingStore{Store: f.store, pk: "keys#demo-k2"}
	v := f.instance(vend.Options{DisableRefreshAhead: true, L1MaxAge: -1}, rs, nil)
	_, err := v.Token(bg, req("demo-k2", "a"))
	if err == nil || !errors.Is(err, store.ErrRejected) || f.requests("demo-k2") != 0 {
		t.Fatalf("refused key record: want a clear error and no upstream request, got %v (%d requests)", err, f.requests("demo-k2"))
	}
	rs.mu.Lock()
	before := rs.writes
	rs.mu.Unlock()
	if _, err := v.Token(bg, req("demo-mobi", "z")); err != nil {
		t.Fatalf("a healthy provider on the same instance: %v", err)
	}
	rs.mu.Lock()
	after := rs.writes
	rs.mu.Unlock()
	if after == before {
		t.Fatal("the healthy provider was vended around the store: the breaker opened")
	}
}

// testResourceAndAudienceInTheKey: a token's target (RFC 8707 resource,
// audience) is part of its key, sent upstream, refused outside the allowed
// values before any request, and renewed by the refresher per combination.
func testResourceAndAudienceInTheKey(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := *f.up.Defs["demo-k2"]
	def.Resources = []string{"https://api.example/a"}
	def.AllowedResources = []string{"https://api.example/a", "https://api.example/b"}
	def.AllowedAudiences = []string{"ledger"}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	f.provs.Set(&def)
	v := f.vendor(vend.Options{DisableRefreshAhead: true})
	a, err := v.Token(bg, req("demo-k2", ""))
	if err != nil {
		t.Fatal(err)
	}
	b, err := v.Token(bg, vend.Request{Provider: "demo-k2", Resource: "https://api.example/b", Audience: "ledger", MinTTL: -1})
	if err != nil || b.AccessToken == a.AccessToken || f.requests("demo-k2") != 2 {
		t.Fatalf("another target: %v, %d requests", err, f.requests("demo-k2"))
	}
	if again, _ := f.vendor(vend.Options{}).Token(bg, vend.Request{Provider: "demo-k2", Resource: "https://api.example/b", Audience: "ledger", MinTTL: -1}); again.AccessToken != b.AccessToken {
		t.Fatal("the same target from another instance is another token")
	}
	if got := f.up.Server.Targets("demo-k2-client"); len(got) != 2 || got[0] != "resource=https://api.example/a audience=" || got[1] != "resource=https://api.example/b audience=ledger" {
		t.Fatalf("targets sent upstream: %q", got)
	}
	_, err = v.Token(bg, vend.Request{Provider: "demo-k2", Resource: "https://evil.example/", MinTTL: -1})
	if !errors.Is(err, provider.ErrTargetNotAllowed) || !strings.Contains(err.Error(), "https://evil.example/") || f.requests("demo-k2") != 2 {
		t.Fatalf("a resource not allowed: %v", err)
	}
	f.clock.Advance(55 * time.Minute) // both past their refresh point
	res, err := f.vendor(vend.Options{}).RefreshDue(bg, vend.RefreshOptions{Horizon: time.Minute})
	if err != nil || res.Refreshed != 2 {
		t.Fatalf("the refresher renews each target: %+v %v", res, err)
	}
	if got := f.up.Server.Targets("demo-k2-client"); len(got) != 4 || !slices.Contains(got[2:], "resource=https://api.example/b audience=ledger") {
		t.Fatalf("targets of the renewals: %q", got)
	}
}
