package extension

import (
	"net/url"
	"sync"
	"time"

	"github.com/token-vendor/token-vendor/pkg/client"
)

// MaxProofPool is the most proofs one vend invocation signs for the pool
// (the vend function's dpop_count limit).
const MaxProofPool = 8

// proofPool keeps DPoP proofs the vend function signed ahead for a
// (provider, target, method, URL): one invocation with dpop_count N answers
// the request that missed and leaves N-1 proofs here, each handed out once.
// A proof is bound to its token (ath), so each set is kept with its token.
// Proofs older than maxAge are dropped (resource servers bound iat,
// commonly to a minute), and a request naming another nonce than an
// origin's pooled proofs carry (its server demanded a new one) drops that
// origin's proofs. The key never leaves the vendor: the pool holds only
// proofs, as the consumer would between two requests.
type proofPool struct {
	size   int
	maxAge time.Duration

	mu      sync.Mutex
	entries map[poolKey]*pooledProofs
}

type poolKey struct {
	provider, scope, resource, audience string
	method, origin, path                string
}

type pooledProofs struct {
	tok    client.Token // the token the proofs are bound to, without proofs
	exp    time.Time
	nonce  string
	at     time.Time
	proofs []string
}

// maxPoolEntries bounds the pooled targets; beyond it the pool is emptied.
const maxPoolEntries = 256

func newProofPool(size int) *proofPool {
	return &proofPool{size: size, maxAge: 20 * time.Second, entries: map[poolKey]*pooledProofs{}}
}

// keyOf is the pool key of a proof request, ok false for a URL the
// vend function will refuse (nothing is pooled for it). The query and
// fragment are not part of a proof's htu (RFC 9449 §4.2).
func keyOf(r client.Request) (poolKey, bool) {
	u, err := url.Parse(r.DPoPURL)
	if err != nil || u.Host == "" || u.User != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return poolKey{}, false
	}
	return poolKey{provider: r.Provider, scope: r.Scope, resource: r.Resource, audience: r.Audience,
		method: r.DPoPMethod, origin: u.Scheme + "://" + u.Host, path: u.EscapedPath()}, true
}

// take pops a pooled proof for k carrying nonce, with its token, if one is
// younger than maxAge and its token has minTTL left.
func (p *proofPool) take(k poolKey, nonce string, now time.Time, minTTL time.Duration) (client.Token, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ok, e := range p.entries {
		if ok.origin == k.origin && e.nonce != nonce {
			delete(p.entries, ok)
		}
	}
	e := p.entries[k]
	if e == nil {
		return client.Token{}, false
	}
	if now.Sub(e.at) >= p.maxAge || e.exp.Sub(now) < minTTL || len(e.proofs) == 0 {
		delete(p.entries, k)
		return client.Token{}, false
	}
	t := e.tok
	t.DPoPProof = e.proofs[len(e.proofs)-1]
	e.proofs = e.proofs[:len(e.proofs)-1]
	if len(e.proofs) == 0 {
		delete(p.entries, k)
	}
	return t, true
}

// put pools proofs for k, bound to tok and carrying nonce.
func (p *proofPool) put(k poolKey, nonce string, tok client.Token, exp time.Time, proofs []string, now time.Time) {
	if len(proofs) == 0 {
		return
	}
	tok.DPoPProof, tok.DPoPProofs = "", nil
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.entries[k]; e != nil && e.nonce == nonce && e.tok.AccessToken == tok.AccessToken && now.Sub(e.at) < p.maxAge {
		e.proofs = append(e.proofs, proofs...)
		return
	}
	if len(p.entries) >= maxPoolEntries {
		clear(p.entries)
	}
	p.entries[k] = &pooledProofs{tok: tok, exp: exp, nonce: nonce, at: now, proofs: proofs}
}

// dropProvider forgets provider's proofs (its token was reported rejected:
// proofs bound to it are useless).
func (p *proofPool) dropProvider(provider string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.entries {
		if k.provider == provider {
			delete(p.entries, k)
		}
	}
}

// pooled counts the proofs held (tests).
func (p *proofPool) pooled() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, e := range p.entries {
		n += len(e.proofs)
	}
	return n
}
