package dpop

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

// Pool hands out consumer proofs signed ahead for KMS-held keys, where
// each signature is a KMS round trip: when a request finds no proof
// pooled for its (provider, method, URL, token, nonce), the proof it needs
// and Ahead more are signed in parallel (one round trip's latency, not
// Ahead+1), and the next requests for that target take the spares. Nothing
// is signed after a request returns, so it suits Lambda, where nothing
// runs after the response. Each proof is handed out once (its jti is
// unique) and only while younger than MaxAge; a request naming another
// nonce than the pooled proofs carry (the resource server demanded a new
// one) drops them. PEM keys sign in process: they are never pooled.
type Pool struct {
	p *Prover
	// Ahead is how many spare proofs one miss signs (default 3).
	Ahead int
	// MaxAge bounds a pooled proof's age (default 20 s; resource servers
	// commonly accept an iat within a minute).
	MaxAge time.Duration
	// MaxTargets bounds the pooled targets; beyond it the pool is emptied.
	MaxTargets int

	mu    sync.Mutex
	spare map[target][]pooled
}

type target struct{ provider, method, htu, ath string }

type pooled struct {
	proof Proof
	nonce string
	at    time.Time
}

// NewPool pools proofs signed by p.
func NewPool(p *Prover) *Pool {
	return &Pool{p: p, Ahead: 3, MaxAge: 20 * time.Second, MaxTargets: 1000, spare: map[target][]pooled{}}
}

// Sign returns a proof for r, pooled when one is, as Prover.Sign would.
func (pl *Pool) Sign(ctx context.Context, def *provider.Definition, r Request) (Proof, error) {
	if def.DPoPKMSKeyID == "" || r.AccessToken == "" || pl.Ahead <= 0 {
		return pl.p.Sign(ctx, def, r)
	}
	if err := Check(r); err != nil {
		return Proof{}, err
	}
	htu, _ := HTU(r.Target)
	k := target{provider: def.Name + "\x00" + def.Fingerprint(), method: r.Method, htu: htu, ath: ATH(r.AccessToken)}
	if p, ok := pl.take(k, r.Nonce); ok {
		return p, nil
	}
	proofs := make([]Proof, pl.Ahead+1)
	g, gctx := errgroup.WithContext(ctx)
	for i := range proofs {
		g.Go(func() error {
			var err error
			proofs[i], err = pl.p.Sign(gctx, def, r)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		// The spares are optional; the caller's proof is not.
		for _, p := range proofs {
			if p.JWT != "" {
				return p, nil
			}
		}
		return Proof{}, err
	}
	pl.put(k, r.Nonce, proofs[1:])
	return proofs[0], nil
}

// SignN returns n proofs for r: pooled spares first, the rest signed in
// parallel (no spares are signed ahead for a request that asks for
// several: it is the consumer's own pool).
func (pl *Pool) SignN(ctx context.Context, def *provider.Definition, r Request, n int) ([]Proof, error) {
	if n < 1 || n > MaxProofs {
		return nil, fmt.Errorf("dpop: between 1 and %d proofs at once", MaxProofs)
	}
	if def.DPoPKMSKeyID == "" || r.AccessToken == "" || pl.Ahead <= 0 {
		return pl.p.SignN(ctx, def, r, n)
	}
	if err := Check(r); err != nil {
		return nil, err
	}
	htu, _ := HTU(r.Target)
	k := target{provider: def.Name + "\x00" + def.Fingerprint(), method: r.Method, htu: htu, ath: ATH(r.AccessToken)}
	var out []Proof
	for len(out) < n {
		p, ok := pl.take(k, r.Nonce)
		if !ok {
			break
		}
		out = append(out, p)
	}
	if len(out) == n {
		return out, nil
	}
	rest, err := pl.p.SignN(ctx, def, r, n-len(out))
	if err != nil {
		return nil, err
	}
	return append(out, rest...), nil
}

// take pops a fresh proof for k carrying nonce; spares with another nonce
// or too old are dropped.
func (pl *Pool) take(k target, nonce string) (Proof, bool) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	now := pl.p.now()
	list := pl.spare[k]
	for len(list) > 0 {
		p := list[len(list)-1]
		list = list[:len(list)-1]
		if p.nonce == nonce && now.Sub(p.at) < pl.MaxAge {
			pl.store(k, list)
			return p.proof, true
		}
		if p.nonce != nonce {
			list = nil // the server wants another nonce: every spare is stale
		}
	}
	pl.store(k, nil)
	return Proof{}, false
}

func (pl *Pool) put(k target, nonce string, proofs []Proof) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if _, ok := pl.spare[k]; !ok && len(pl.spare) >= pl.MaxTargets {
		pl.spare = map[target][]pooled{}
	}
	now := pl.p.now()
	list := pl.spare[k]
	for _, p := range proofs {
		list = append(list, pooled{proof: p, nonce: nonce, at: now})
	}
	pl.spare[k] = list
}

func (pl *Pool) store(k target, list []pooled) {
	if len(list) == 0 {
		delete(pl.spare, k)
		return
	}
	pl.spare[k] = list
}

// Pooled counts the spare proofs held (tests, metrics).
func (pl *Pool) Pooled() int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	n := 0
	for _, l := range pl.spare {
		n += len(l)
	}
	return n
}
