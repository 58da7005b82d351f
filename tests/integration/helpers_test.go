package integration

import (
	"context"
	"sync"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// fixedFetcher issues a given token; for tests about storage, not upstreams.
type fixedFetcher struct {
	mu    sync.Mutex
	token string
	calls int
}

func (f *fixedFetcher) Fetch(_ context.Context, _ *provider.Definition, key provider.Key) (*upstream.Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	now := time.Now()
	return &upstream.Token{AccessToken: f.token, TokenType: "Bearer", Lifetime: time.Hour, IssuedAt: now, Expiry: now.Add(time.Hour)}, nil
}

func (f *fixedFetcher) Revoke(context.Context, *provider.Definition, string) error { return nil }

// countingStore counts store calls.
type countingStore struct {
	vend.Store
	mu         sync.Mutex
	gets, puts int
}

func (c *countingStore) Get(ctx context.Context, pk string, consistent bool) (*store.Item, error) {
	c.mu.Lock()
	c.gets++
	c.mu.Unlock()
	return c.Store.Get(ctx, pk, consistent)
}

func (c *countingStore) Put(ctx context.Context, it *store.Item, expect int64) error {
	c.mu.Lock()
	c.puts++
	c.mu.Unlock()
	return c.Store.Put(ctx, it, expect)
}

func (c *countingStore) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gets, c.puts = 0, 0
}
