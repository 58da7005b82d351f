package gate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// Prover signs DPoP proofs with a provider's DPoP key (dpop.Prover).
type Prover interface {
	Sign(ctx context.Context, def *provider.Definition, r dpop.Request) (dpop.Proof, error)
}

// WithProver lets TokenProof sign consumers' proofs; it returns g.
func (g *Gate) WithProver(p Prover) *Gate {
	g.prover = p
	return g
}

// errKeyMoved is a token bound to another key than the one that signs now
// (a KMS alias re-pointed while the token was cached).
var errKeyMoved = errors.New("the cached DPoP-bound token is bound to another key than the provider's DPoP key now names")

// TokenProof vends as Token does and, when the token is DPoP-bound, adds a
// DPoP proof (RFC 9449 §7) for the request the caller is about to make
// (r: method, URL, and the resource server's nonce if it demanded one),
// bound to the token (ath) and signed by the vendor with the provider's
// DPoP key, which never leaves the vendor. The caller needs the same
// allowed_callers decision as for the token; the request leaves one audit
// record, saying that a proof was issued (never the proof). A token the
// provider answered as Bearer comes back without a proof.
func (g *Gate) TokenProof(ctx context.Context, req vend.Request, r dpop.Request) (vend.Token, string, error) {
	t, proofs, err := g.tokenProofs(ctx, req, r, 0)
	if len(proofs) == 0 {
		return t, "", err
	}
	return t, proofs[0], err
}

// TokenProofs is TokenProof with n proofs (1 to dpop.MaxProofs) for the
// same request, each with its own jti, for a consumer that hands them out
// one per request (the extension's proof pool). It is one request: the
// same decision, one audit record (saying how many proofs were issued).
func (g *Gate) TokenProofs(ctx context.Context, req vend.Request, r dpop.Request, n int) (vend.Token, []string, error) {
	return g.tokenProofs(ctx, req, r, n)
}

// multiSigner signs several proofs at once (dpop.Prover, dpop.Pool).
type multiSigner interface {
	SignN(ctx context.Context, def *provider.Definition, r dpop.Request, n int) ([]dpop.Proof, error)
}

// tokenProofs: n 0 is TokenProof's single proof.
func (g *Gate) tokenProofs(ctx context.Context, req vend.Request, r dpop.Request, n int) (vend.Token, []string, error) {
	_, c, err := g.admit(ctx, authz.OpVend, req)
	if err != nil {
		return vend.Token{}, nil, err
	}
	var proofs []string
	t, err := func() (vend.Token, error) {
		if n < 0 || n > dpop.MaxProofs {
			return vend.Token{}, wire.Invalid("dpop_count must be from 1 to %d", dpop.MaxProofs)
		}
		if err := dpop.Check(r); err != nil {
			return vend.Token{}, wire.Invalid("%s", err)
		}
		def, err := g.defs.Get(ctx, req.Provider)
		if err != nil {
			return vend.Token{}, err
		}
		if !def.UsesDPoP() {
			return vend.Token{}, wire.Invalid("provider %s has no DPoP key: its tokens are not DPoP-bound (leave out dpop_htm and dpop_htu)", req.Provider)
		}
		if g.prover == nil {
			return vend.Token{}, errors.New("DPoP proofs are not configured in this vendor")
		}
		t, err := g.core.Token(ctx, req)
		if err != nil || t.TokenType != upstream.TokenTypeDPoP {
			return t, err
		}
		r.AccessToken = t.AccessToken
		p, err := g.prover.Sign(ctx, def, r)
		if err != nil {
			return vend.Token{}, fmt.Errorf("sign a DPoP proof: %w", err)
		}
		if t.JKT != "" && p.JKT != t.JKT {
			// The token is bound to a key that no longer signs (a KMS
			// alias re-pointed): for us it is a rejected token. Replace it
			// (at most once per key per 30 s, §3 item 6) and sign again.
			sum := sha256.Sum256([]byte(t.AccessToken))
			if t, err = g.core.Rejected(ctx, req, hex.EncodeToString(sum[:])); err != nil {
				return vend.Token{}, err
			}
			if t.TokenType != upstream.TokenTypeDPoP {
				return t, nil
			}
			r.AccessToken = t.AccessToken
			if p, err = g.prover.Sign(ctx, def, r); err != nil {
				return vend.Token{}, fmt.Errorf("sign a DPoP proof: %w", err)
			}
			if p.JKT != t.JKT {
				return vend.Token{}, errKeyMoved
			}
		}
		proofs = append(proofs, p.JWT)
		if n > 1 {
			// The first proof checked the binding; the rest are signed by
			// the same key for the same token.
			more, err := g.signMore(ctx, def, r, n-1)
			if err != nil {
				proofs = nil
				return vend.Token{}, fmt.Errorf("sign a DPoP proof: %w", err)
			}
			for _, m := range more {
				if m.JKT != p.JKT {
					proofs = nil
					return vend.Token{}, errKeyMoved
				}
				proofs = append(proofs, m.JWT)
			}
		}
		return t, nil
	}()
	rec := g.record(c, authz.OpVend, req, t, err)
	rec.Proof, rec.Proofs = len(proofs) > 0, len(proofs)
	g.write(ctx, rec)
	if err != nil {
		return vend.Token{}, nil, err
	}
	return t, proofs, nil
}

func (g *Gate) signMore(ctx context.Context, def *provider.Definition, r dpop.Request, n int) ([]dpop.Proof, error) {
	if m, ok := g.prover.(multiSigner); ok {
		return m.SignN(ctx, def, r, n)
	}
	out := make([]dpop.Proof, 0, n)
	for range n {
		p, err := g.prover.Sign(ctx, def, r)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}
