package vendtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// cacheKeyScenarios: promises where cache keys, targets and max_keys meet
// (issue 28; docs/design.md §12.5).
var cacheKeyScenarios = map[string]func(*testing.T, NewStore){
	"OneKeyOneSpelling":                testOneKeyOneSpelling,
	"TargetsCountTowardMaxKeys":        testTargetsCountTowardMaxKeys,
	"DefaultTargetAlwaysAllowed":       testDefaultTargetAlwaysAllowed,
	"L1OneSpelling":                    testL1OneSpelling,
	"OldSpellingNotRenewed":            testOldSpellingNotRenewed,
	"CancellationOpensNoCooldown":      testCancellationOpensNoCooldown,
	"ScopeSubsetsCountTowardMaxKeys":   testScopeSubsetsCountTowardMaxKeys,
	"DefaultSubsetsCountTowardMaxKeys": testDefaultSubsetsCountTowardMaxKeys,
}

// testDefaultSubsetsCountTowardMaxKeys: a provider's default audiences are
// always allowed, so a caller may name any subset of them, each its own
// key: 4 defaults make 15 targets with no allowed_audiences set. Before
// the fix they were not counted (allowed_scopes set, no allowed target):
// 10 distinct subsets were cached with max_keys 5.
func testDefaultSubsetsCountTowardMaxKeys(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := *f.up.Defs["demo-k2"]
	def.AllowedScopes = []string{"read"}
	def.Scopes = []string{"read"}
	def.MaxKeys = 5
	def.Audiences = []string{"aud-0", "aud-1", "aud-2", "aud-3"}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	f.provs.Set(&def)
	v := f.vendor(vend.Options{DisableRefreshAhead: true})
	admitted := 0
	for _, aud := range []string{"aud-0", "aud-1", "aud-2", "aud-3", "aud-0 aud-1", "aud-0 aud-2", "aud-0 aud-3", "aud-1 aud-2", "aud-1 aud-3", "aud-2 aud-3"} {
		_, err := v.Token(bg, vend.Request{Provider: "demo-k2", Scope: "read", Audience: aud, MinTTL: -1})
		switch {
		case err == nil:
			admitted++
		case errors.Is(err, provider.ErrKeyLimit):
		default:
			t.Fatalf("audience %q: %v", aud, err)
		}
	}
	if admitted != 5 || f.requests("demo-k2") != 5 {
		t.Fatalf("%d subsets of the default audiences admitted (%d upstream requests) with max_keys 5", admitted, f.requests("demo-k2"))
	}
}

// testScopeSubsetsCountTowardMaxKeys: allowed_scopes bound the scope sets
// only to their subsets, 2^n of them: 12 allowed scopes make 4096 keys, each
// fetched upstream and renewed until idle, as 12 allowed audiences do. When
// the subsets outnumber max_keys, the keys count. Before the fix 30
// distinct subsets of 12 allowed scopes were all cached with max_keys 5.
func testScopeSubsetsCountTowardMaxKeys(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := *f.up.Defs["demo-k2"]
	def.MaxKeys = 5
	for i := range 12 {
		def.AllowedScopes = append(def.AllowedScopes, fmt.Sprintf("s%02d", i))
	}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	f.provs.Set(&def)
	v := f.vendor(vend.Options{DisableRefreshAhead: true})
	admitted := 0
	for i := range 30 {
		scope := fmt.Sprintf("s%02d s%02d", i%12, (i/12+i+1)%12)
		_, err := v.Token(bg, req("demo-k2", scope))
		switch {
		case err == nil:
			admitted++
		case errors.Is(err, provider.ErrKeyLimit):
		default:
			t.Fatalf("scope %q: %v", scope, err)
		}
	}
	if admitted != 5 || f.requests("demo-k2") != 5 {
		t.Fatalf("%d distinct scope subsets admitted (%d upstream requests) with max_keys 5", admitted, f.requests("demo-k2"))
	}
}

// testOneKeyOneSpelling: a scope token may contain '#' and '=', so a caller
// asking for scope "read#r=https://api.example/b" must not get (or renew,
// or poison) the token cached for scope read with resource
// https://api.example/b. Before the fix both had one key: the second
// caller got the first caller's token without any upstream request.
func testOneKeyOneSpelling(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := *f.up.Defs["demo-k2"] // no allowed_scopes: any scope token
	def.AllowedResources = []string{"https://api.example/b"}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	f.provs.Set(&def)
	v := f.vendor(vend.Options{DisableRefreshAhead: true})
	a, err := v.Token(bg, vend.Request{Provider: "demo-k2", Scope: "read", Resource: "https://api.example/b", MinTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.vendor(vend.Options{DisableRefreshAhead: true}).Token(bg, req("demo-k2", "read#r=https://api.example/b"))
	if err != nil {
		t.Fatal(err)
	}
	if b.AccessToken == a.AccessToken || f.requests("demo-k2") != 2 {
		t.Fatalf("scope %q got the token of scope read with resource https://api.example/b (%d upstream requests)", "read#r=https://api.example/b", f.requests("demo-k2"))
	}
	if again, _ := f.vendor(vend.Options{}).Token(bg, vend.Request{Provider: "demo-k2", Scope: "read", Resource: "https://api.example/b", MinTTL: -1}); again.AccessToken != a.AccessToken {
		t.Fatal("the first caller's token was replaced")
	}
	// The refresher renews each record for its own request.
	f.clock.Advance(55 * time.Minute)
	res, err := f.vendor(vend.Options{}).RefreshDue(bg, vend.RefreshOptions{Horizon: time.Minute})
	if err != nil || res.Refreshed != 2 {
		t.Fatalf("the refresher renews both keys: %+v %v", res, err)
	}
	// Targets lists the requests that named one: the first fetch and the
	// renewal of its key; the other key's renewal named none.
	if got := f.up.Server.Targets("demo-k2-client"); len(got) != 2 || f.requests("demo-k2") != 4 || strings.Join(got, "|") != "resource=https://api.example/b audience=|resource=https://api.example/b audience=" {
		t.Fatalf("targets of the renewals: %q (%d requests)", got, f.requests("demo-k2"))
	}
}

// testTargetsCountTowardMaxKeys: with allowed_scopes set, the scope sets
// are bounded, but 12 allowed audiences (up to 10 per request) still make
// thousands of keys; every key with a target counts toward max_keys. Before
// the fix, 30 distinct audience sets were all cached with max_keys 5.
func testTargetsCountTowardMaxKeys(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := *f.up.Defs["demo-k2"]
	def.AllowedScopes = []string{"read"}
	def.MaxKeys = 5
	for i := range 12 {
		def.AllowedAudiences = append(def.AllowedAudiences, fmt.Sprintf("aud-%02d", i))
	}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	f.provs.Set(&def)
	v := f.vendor(vend.Options{DisableRefreshAhead: true})
	admitted := 0
	for i := range 30 {
		aud := fmt.Sprintf("aud-%02d aud-%02d", i%12, (i/12+i+1)%12)
		_, err := v.Token(bg, vend.Request{Provider: "demo-k2", Scope: "read", Audience: aud, MinTTL: -1})
		switch {
		case err == nil:
			admitted++
		case errors.Is(err, provider.ErrKeyLimit):
		default:
			t.Fatalf("audience %q: %v", aud, err)
		}
	}
	if admitted != 5 || f.requests("demo-k2") != 5 {
		t.Fatalf("%d distinct targets admitted (%d upstream requests) with max_keys 5", admitted, f.requests("demo-k2"))
	}
	// Scopes alone stay bounded by allowed_scopes: a provider with
	// allowed_scopes and no allowed target keeps no key count.
	if _, err := v.Token(bg, req("demo-dot", "read")); err != nil {
		t.Fatal(err)
	}
	if it, _ := f.store.Get(bg, "keys#demo-dot", true); it != nil {
		t.Fatal("a provider with allowed_scopes and no allowed targets needs no key count")
	}
}

// testDefaultTargetAlwaysAllowed: a request naming the provider's own
// default resource or audience is the default request, whatever
// allowed_resources says; before the fix it was refused as invalid_target
// when the definition had defaults and no allowed list.
func testDefaultTargetAlwaysAllowed(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := *f.up.Defs["demo-k2"]
	def.Resources = []string{"https://api.example/a"}
	def.Audiences = []string{"ledger"}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	f.provs.Set(&def)
	v := f.vendor(vend.Options{DisableRefreshAhead: true})
	dflt, err := v.Token(bg, req("demo-k2", ""))
	if err != nil {
		t.Fatal(err)
	}
	named, err := v.Token(bg, vend.Request{Provider: "demo-k2", Resource: "https://api.example/a", Audience: "ledger", MinTTL: -1})
	if err != nil || named.AccessToken != dflt.AccessToken || f.requests("demo-k2") != 1 {
		t.Fatalf("naming the defaults: %v (%d upstream requests); want the default token", err, f.requests("demo-k2"))
	}
	if _, err := v.Token(bg, vend.Request{Provider: "demo-k2", Audience: "other", MinTTL: -1}); !errors.Is(err, provider.ErrTargetNotAllowed) {
		t.Fatalf("a value beyond the defaults without allowed_audiences: %v", err)
	}
}

// testL1OneSpelling: L1 is keyed by the request as written, before it is
// parsed; a scope spelling another request's target with the separator
// of that key must be refused as malformed, not answered from L1. Before
// the fix, scope "read\x00https://api.example/b\x00" got the token of
// scope read with resource https://api.example/b from L1.
func testL1OneSpelling(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := *f.up.Defs["demo-k2"]
	def.AllowedResources = []string{"https://api.example/b"}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	f.provs.Set(&def)
	v := f.vendor(vend.Options{DisableRefreshAhead: true, L1MaxAge: time.Minute})
	if _, err := v.Token(bg, vend.Request{Provider: "demo-k2", Scope: "read", Resource: "https://api.example/b", MinTTL: -1}); err != nil {
		t.Fatal(err)
	}
	tok, err := v.Token(bg, req("demo-k2", "read\x00https://api.example/b\x00"))
	if !errors.Is(err, vend.ErrInvalidRequest) {
		t.Fatalf("a scope with NUL bytes: got %q, %v; want invalid_request", tok.AccessToken, err)
	}
}

// testOldSpellingNotRenewed: records of the earlier key spelling
// (scope#r=resource) are neither served nor renewed after the upgrade: the
// refresher retires them (out of the index; they expire by TTL) and a
// caller's request is fetched once under its new key.
func testOldSpellingNotRenewed(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	def := f.up.Defs["demo-k2"]
	v := f.vendor(vend.Options{DisableRefreshAhead: true})
	if _, err := v.Token(bg, req("demo-k2", "read#r=https://api.example/b")); err != nil {
		t.Fatal(err)
	}
	cur, err := f.store.Get(bg, def.KeyFor([]string{"read#r=https://api.example/b"}).PK, true)
	if err != nil || cur == nil {
		t.Fatalf("the new record: %v", err)
	}
	old := *cur
	old.PK = "token#demo-k2#" + def.Fingerprint() + "#read#r=https://api.example/b"
	old.Scope, old.Resource = "read", "https://api.example/b"
	old.Version, old.WriteID = 1, "old-spelling"
	if err := f.store.Put(bg, &old, 0); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(55 * time.Minute)
	before := f.requests("demo-k2")
	res, err := f.vendor(vend.Options{}).RefreshDue(bg, vend.RefreshOptions{Horizon: time.Minute})
	// The old record can never be renewed: retired (out of the refresh
	// index, docs/design.md §5 Refresher), so later runs do not count it.
	if err != nil || res.Refreshed != 1 || res.Retired != 1 || f.requests("demo-k2")-before != 1 {
		t.Fatalf("only the new record is renewed: %+v %v (%d requests)", res, err, f.requests("demo-k2")-before)
	}
	if left, _ := f.store.Due(bg, f.clock.Now().Add(24*time.Hour), nil); len(left) != 1 || left[0].PK == old.PK {
		t.Fatalf("the refresh index after the run: %d records; want only the new one", len(left))
	}
	if got := f.up.Server.Targets("demo-k2-client"); len(got) != 0 {
		t.Fatalf("the old record was renewed for its target: %q", got)
	}
}

// testCancellationOpensNoCooldown: a renewal canceled by its own caller
// (the run's context canceled, not its deadline) says nothing about the
// provider: it opens no fleet-wide cooldown refusing everyone else. Before
// the fix the canceled fetch was recorded as a transient failure and
// cooldown#{provider} opened.
func testCancellationOpensNoCooldown(t *testing.T, newStore NewStore) {
	f := newFixture(t, newStore)
	if _, err := f.vendor(vend.Options{DisableRefreshAhead: true}).Token(bg, req("demo-k2", "")); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(55 * time.Minute) // due
	f.up.Server.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Delay: 10 * time.Second})
	ctx, cancel := context.WithCancel(bg)
	go func() {
		time.Sleep(300 * time.Millisecond)
		cancel()
	}()
	f.vendor(vend.Options{}).RefreshDue(ctx, vend.RefreshOptions{Horizon: time.Minute})
	f.up.Server.ClearFaults()
	if cd, _ := f.store.Get(bg, "cooldown#demo-k2", true); cd != nil && f.clock.Now().Before(time.UnixMilli(cd.CooldownUntil)) {
		t.Fatalf("a canceled renewal opened a cooldown until %v", time.UnixMilli(cd.CooldownUntil))
	}
}
