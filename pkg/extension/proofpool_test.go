package extension

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/localcache"
)

// poolVend signs DPoPCount proofs per fetch, each unique, and counts them.
type poolVend struct {
	mu      sync.Mutex
	fetches []client.Request
	n       atomic.Int64
	token   string
}

func (p *poolVend) Fetch(_ context.Context, r client.Request) (*client.Token, error) {
	p.mu.Lock()
	p.fetches = append(p.fetches, r)
	tok := p.token
	p.mu.Unlock()
	t := &client.Token{Provider: r.Provider, AccessToken: tok, TokenType: "DPoP", ExpiresIn: 3600,
		ExpiresAt: time.Now().Add(time.Hour).UTC().Format(time.RFC3339), Scope: r.Scope}
	mk := func() string { return fmt.Sprintf("proof-%d-%s-%s", p.n.Add(1), r.DPoPURL, r.DPoPNonce) }
	if r.DPoPCount > 1 {
		for range r.DPoPCount {
			t.DPoPProofs = append(t.DPoPProofs, mk())
		}
	} else {
		t.DPoPProof = mk()
	}
	return t, nil
}

func (p *poolVend) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.fetches)
}

func proofPath(target, nonce string) string {
	q := url.Values{"scope": {"read"}, "dpop_htm": {"GET"}, "dpop_htu": {target}}
	if nonce != "" {
		q.Set("dpop_nonce", nonce)
	}
	return "/v1/tokens/bank?" + q.Encode()
}

// The extension's proof pool: a miss asks the vend function for N proofs
// (dpop_count) and answers with one; the next N-1 requests for the same
// (method, URL without query, nonce) take the others, never one twice,
// even with many callers at once; another nonce for the origin drops its
// proofs, so do 20 s and a rejected-token report; without the pool each
// proof is one fetch.
func TestProofPoolHandsOutEachProofOnce(t *testing.T) {
	f := &poolVend{token: "tok-1"}
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	c := newWith(f, secret, localcache.Options{Now: clock}).WithProofPool(4)
	h := c.Handler()
	get := func(path string) string {
		t.Helper()
		rec, m := do(h, "GET", path, "", secret)
		p, _ := m["dpop_proof"].(string)
		if rec.Code != 200 || p == "" || m["access_token"] == nil || m["dpop_proofs"] != nil {
			t.Fatalf("%s: %d %v", path, rec.Code, m)
		}
		return p
	}
	seen := map[string]bool{}
	once := func(p string) {
		t.Helper()
		if seen[p] {
			t.Fatalf("proof %s handed out twice", p)
		}
		seen[p] = true
	}
	for i := range 8 {
		once(get(proofPath("https://rs.example/a?page="+fmt.Sprint(i), "")))
	}
	if f.count() != 2 || f.fetches[0].DPoPCount != 4 || c.pool.pooled() != 0 {
		t.Fatalf("8 proofs took %d fetches (count %d), %d pooled", f.count(), f.fetches[0].DPoPCount, c.pool.pooled())
	}
	// Many callers at once: every proof handed out once.
	var wg sync.WaitGroup
	got := make(chan string, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, m := do(h, "GET", proofPath("https://rs.example/b", ""), "", secret)
			got <- m["dpop_proof"].(string)
		}()
	}
	wg.Wait()
	close(got)
	for p := range got {
		once(p)
	}
	if n := f.count() - 2; n < 16 || n > 64 {
		t.Fatalf("64 concurrent proofs took %d fetches", n)
	}
	// A nonce demand: the origin's pooled proofs (another path too) are
	// dropped, the next proofs carry the nonce.
	// (The concurrent round above may leave spares for /b: which fetch's
	// spares are used depends on scheduling, so count from here.)
	left := c.pool.pooled()
	get(proofPath("https://rs.example/c", ""))
	get(proofPath("https://rs.example/d", ""))
	get(proofPath("https://other.example/d", ""))
	if c.pool.pooled() != left+9 {
		t.Fatalf("%d pooled, want %d", c.pool.pooled(), left+9)
	}
	before := f.count()
	if p := get(proofPath("https://rs.example/c", "n1")); f.count() != before+1 || p[len(p)-3:] != "-n1" {
		t.Fatalf("nonce: %s, %d fetches", p, f.count()-before)
	}
	if c.pool.pooled() != 3+3 { // other.example's 3, and 3 with the nonce
		t.Fatalf("after the nonce demand %d pooled, want 6", c.pool.pooled())
	}
	// 20 s later the pooled proofs are not handed out.
	mu.Lock()
	now = now.Add(20 * time.Second)
	mu.Unlock()
	before = f.count()
	get(proofPath("https://rs.example/c", "n1"))
	if f.count() != before+1 {
		t.Fatal("a proof 20 s old was handed out")
	}
	// A rejected-token report drops the provider's proofs (bound to it).
	rec, _ := do(h, "POST", "/v1/tokens/bank/rejected?scope=read", `{"token_sha256":"`+fmt.Sprintf("%064d", 0)+`"}`, secret)
	if rec.Code != 200 || c.pool.pooled() != 0 {
		t.Fatalf("rejected: %d, %d pooled", rec.Code, c.pool.pooled())
	}
	// Without the pool: one fetch per proof, no dpop_count.
	plain := &poolVend{token: "tok-1"}
	ph := New(plain, secret, nil).Handler()
	for range 3 {
		do(ph, "GET", proofPath("https://rs.example/a", ""), "", secret)
	}
	if plain.count() != 3 || plain.fetches[0].DPoPCount != 0 {
		t.Fatalf("unpooled: %d fetches", plain.count())
	}
}
