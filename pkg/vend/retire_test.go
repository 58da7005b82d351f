package vend_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

// flakySource is a provider source (Secrets Manager) that fails as
// unavailable (throttled, 5xx) while down is set.
type flakySource struct {
	*vendtest.Providers
	down atomic.Bool
}

func (f *flakySource) Get(ctx context.Context, name string) (*provider.Definition, error) {
	if f.down.Load() {
		return nil, fmt.Errorf("secret %s: %w: ThrottlingException", name, provider.ErrSourceUnavailable)
	}
	return f.Providers.Get(ctx, name)
}

func (f *flakySource) Names(context.Context) ([]string, error) { return nil, nil }

// A key is retired only on a definition read from the source that says it
// can never be renewed, never on a transient registry error. The refresher
// instance caches a provider's definition (registry.Cached, as deployed);
// the operator changes the registration; an api instance vends and caches
// keys under the new one; then Secrets Manager throttles. The refresher
// sees keys of another registration than its cached definition, reads past
// the cache, and the read fails: the keys are live, of the current
// registration, and must stay in the refresh index (counted failed, tried
// again next run), not be retired. Before, Cached.Reload answered the
// failed read with the stale cached definition, and every key of the
// provider was retired (and the old registration's key renewed with the stale definition).
func TestTransientRegistryErrorRetiresNothing(t *testing.T) {
	ctx := context.Background()
	clock := vendtest.NewClock()
	up := vendtest.NewUpstream(t)
	src := &flakySource{Providers: vendtest.NewProviders(up.Defs)}
	st := store.NewMemory(clock.Now)
	opts := vend.Options{Now: clock.Now, Sleep: clock.Sleep, DisableRefreshAhead: true, L1MaxAge: -1}
	refresher := vend.New(registry.NewCached(src, registry.CacheOptions{Now: clock.Now}), vendtest.Client(clock), st, opts)
	api := vend.New(src.Providers, vendtest.Client(clock), st, opts)
	// The refresher instance reads (and caches) the old registration.
	cacheKeys(t, refresher, "demo-k2", 1)
	moved := *up.Defs["demo-k2"]
	moved.TokenURL = up.URL + sandbox.K2TokenPath + "?tenant=2" // a new registration
	src.Set(&moved)
	cacheKeys(t, api, "demo-k2", 4) // the new registration's keys, some rewritten
	src.down.Store(true)            // Secrets Manager throttles
	clock.Advance(time.Minute)      // within the cache's TTL

	// The operator forces a renewal after the change ({"force":true}).
	res, err := refresher.RefreshDue(ctx, vend.RefreshOptions{Force: true, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Retired != 0 {
		t.Fatalf("a throttled definition read retired %d live keys of the current registration: %+v", res.Retired, res)
	}
	left, err := st.Due(ctx, clock.Now().Add(time.Hour), nil)
	kept := 0
	for _, it := range left {
		if it.Fingerprint == moved.Fingerprint() {
			kept++
		}
	}
	if err != nil || kept != 4 {
		t.Fatalf("%d of the 4 keys of the current registration left in the refresh index (%v)", kept, err)
	}
	// The source answers again: the 4 keys are renewed, and the old
	// registration's key (and only it) retired.
	src.down.Store(false)
	res, err = refresher.RefreshDue(ctx, vend.RefreshOptions{Force: true, Exclusive: true})
	if err != nil || res.Refreshed != 4 || res.Retired != 1 {
		t.Fatalf("once Secrets Manager answers: %+v (%v), want the 4 keys renewed and the old registration's one retired", res, err)
	}
}

// A provider's keys are retired as "provider removed" only when the source
// says so now, not on a "no such provider" the registry cached: the secret
// was deleted by mistake and restored (RestoreSecret) while the refresher
// instance still held the not-found answer (NotFoundTTL, 30 s). Before,
// the run retired every key of the restored provider on the cached answer.
func TestCachedNotFoundRetiresNothing(t *testing.T) {
	ctx := context.Background()
	clock := vendtest.NewClock()
	up := vendtest.NewUpstream(t)
	src := &flakySource{Providers: vendtest.NewProviders(up.Defs)}
	st := store.NewMemory(clock.Now)
	opts := vend.Options{Now: clock.Now, Sleep: clock.Sleep, DisableRefreshAhead: true, L1MaxAge: -1}
	provs := registry.NewCached(src, registry.CacheOptions{Now: clock.Now})
	refresher := vend.New(provs, vendtest.Client(clock), st, opts)
	cacheKeys(t, refresher, "demo-k2", 3)
	src.Delete("demo-k2")
	clock.Advance(6 * time.Minute) // past the definition's TTL
	if _, err := provs.Get(ctx, "demo-k2"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("deleted provider read: %v", err)
	}
	src.Set(up.Defs["demo-k2"]) // restored
	clock.Advance(10 * time.Second)

	res, err := refresher.RefreshDue(ctx, vend.RefreshOptions{Force: true, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Retired != 0 || res.Refreshed != 3 {
		t.Fatalf("a cached not-found retired the restored provider's keys: %+v, want the 3 keys renewed", res)
	}
}

// flakyGets is a store whose nth consistent read of one record fails (a
// throttled GetItem past the SDK's retries).
type flakyGets struct {
	*store.Memory
	mu     sync.Mutex
	pk     string
	n, cur int
}

func (f *flakyGets) Get(ctx context.Context, pk string, consistent bool) (*store.Item, error) {
	f.mu.Lock()
	fail := false
	if pk == f.pk {
		f.cur++
		fail = f.cur == f.n
	}
	f.mu.Unlock()
	if fail {
		return nil, errors.New("ProvisionedThroughputExceededException")
	}
	return f.Memory.Get(ctx, pk, consistent)
}

// A key with a target (a resource) is not retired because one read of its
// record failed: the renewal reads the record for the target the index
// does not project, and a failed read said nothing about the key. Before,
// the failed read left the key spelled without its target, the run took it
// for a key the definition no longer makes, and retired it (the next read
// succeeded) — a live key of the current registration out of the index.
func TestStoreReadErrorRetiresNoTargetKey(t *testing.T) {
	ctx := context.Background()
	clock := vendtest.NewClock()
	up := vendtest.NewUpstream(t)
	def := *up.Defs["demo-k2"]
	def.AllowedResources = []string{"https://api.example/b"}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	provs := vendtest.NewProviders(up.Defs)
	provs.Set(&def)
	st := &flakyGets{Memory: store.NewMemory(clock.Now)}
	v := vend.New(provs, vendtest.Client(clock), st, vend.Options{Now: clock.Now, Sleep: clock.Sleep, DisableRefreshAhead: true, L1MaxAge: -1})
	if _, err := v.Token(ctx, vend.Request{Provider: "demo-k2", Scope: "read", Resource: "https://api.example/b", MinTTL: -1}); err != nil {
		t.Fatal(err)
	}
	st.pk = def.KeyForTarget([]string{"read"}, provider.Target{Resources: []string{"https://api.example/b"}}).PK
	st.n = 2 // the run's first read (the key-spelling check) answers; the renewal's fails
	clock.Advance(50 * time.Minute)

	res, err := v.RefreshDue(ctx, vend.RefreshOptions{Horizon: time.Minute, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Retired != 0 {
		t.Fatalf("a failed read of its record retired a live target key: %+v", res)
	}
	st.n = 0
	res, err = v.RefreshDue(ctx, vend.RefreshOptions{Horizon: time.Minute, Exclusive: true})
	if err != nil || res.Refreshed != 1 {
		t.Fatalf("next run: %+v (%v), want the key renewed", res, err)
	}
}
