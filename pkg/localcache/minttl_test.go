package localcache

import (
	"context"
	"testing"
	"time"
)

// A request without a min_ttl (0, or negative) is the vendor's default,
// 60 s, as the Fetcher sends it (nothing) and the vendor rules: the cache
// never serves it a token with less left (capped at half the lifetime),
// nor an expired one, and Rejected never answers a repeated report with a
// replacement about to expire. Before the fix Get judged 0 as 0 (30 s left
// served) and a negative MinTTL as itself (an expired token served), and
// Rejected returned any token not yet expired (5 s left).
func TestNoTokenBelowTheDefaultMinTTL(t *testing.T) {
	ctx := context.Background()
	v := newVend(time.Hour)
	c := newCache(v, Options{})
	a, err := c.Get(ctx, Request{Provider: "p"})
	if err != nil {
		t.Fatal(err)
	}
	v.advance(time.Hour - 30*time.Second)
	if b, err := c.Get(ctx, Request{Provider: "p"}); err != nil || b.AccessToken == a.AccessToken || b.ExpiresIn < 60 {
		t.Fatalf("no min_ttl: served %d s left (same token %v), err %v; want at least the default 60 s", b.ExpiresIn, b.AccessToken == a.AccessToken, err)
	}

	v2 := newVend(time.Hour)
	c2 := newCache(v2, Options{})
	a2, _ := c2.Get(ctx, Request{Provider: "p", MinTTL: time.Minute})
	v2.advance(time.Hour + time.Minute)
	if b, err := c2.Get(ctx, Request{Provider: "p", MinTTL: -time.Hour}); err != nil || b.AccessToken == a2.AccessToken || b.ExpiresIn < 60 {
		t.Fatalf("negative min_ttl: served %d s left (same token %v), err %v", b.ExpiresIn, b.AccessToken == a2.AccessToken, err)
	}

	v3 := newVend(time.Hour)
	c3 := newCache(v3, Options{})
	a3, _ := c3.Get(ctx, Request{Provider: "p", MinTTL: time.Minute})
	r1, err := c3.Rejected(ctx, Request{Provider: "p"}, TokenSHA256(a3.AccessToken))
	if err != nil {
		t.Fatal(err)
	}
	v3.advance(time.Hour - 5*time.Second)
	r2, err := c3.Rejected(ctx, Request{Provider: "p"}, TokenSHA256(a3.AccessToken))
	if err != nil || r2.ExpiresIn < 60 {
		t.Fatalf("a repeated report got %d s left (the replacement %v), err %v; want at least the default 60 s", r2.ExpiresIn, r2.AccessToken == r1.AccessToken, err)
	}
}
