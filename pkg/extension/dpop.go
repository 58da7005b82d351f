package extension

import (
	"encoding/json"
	"math"
	"net/http"
	"net/url"
	"time"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// proof answers a request naming dpop_htm and dpop_htu: a proof is for
// one request, so it is asked of the vend function (which decides and
// audits as for the token; the key never leaves the vendor), unless the
// proof pool (WithProofPool) holds one the vend function signed ahead for
// the same request.
func (c *Cache) proof(w http.ResponseWriter, r *http.Request, provider string, q url.Values) {
	if q.Get("dpop_htm") == "" || q.Get("dpop_htu") == "" {
		writeError(w, http.StatusBadRequest, "invalid_request", "a DPoP proof needs both dpop_htm and dpop_htu", provider, 0)
		return
	}
	req := client.Request{Provider: provider, Scope: q.Get("scope"), Resource: q.Get("resource"), Audience: q.Get("audience"),
		DPoPMethod: q.Get("dpop_htm"), DPoPURL: q.Get("dpop_htu"), DPoPNonce: q.Get("dpop_nonce")}
	k, pooled := poolKey{}, false
	if c.pool != nil {
		if k, pooled = keyOf(req); pooled {
			if tok, ok := c.pool.take(k, req.DPoPNonce, c.now(), defaultMinTTL); ok {
				c.writeProof(w, tok)
				return
			}
			req.DPoPCount = c.pool.size
		}
	}
	tok, err := c.f.Fetch(r.Context(), req)
	if err != nil {
		c.answer(w, r, provider, client.Token{}, time.Time{}, err)
		return
	}
	exp, perr := time.Parse(time.RFC3339, tok.ExpiresAt)
	if perr != nil || tok.AccessToken == "" {
		writeError(w, http.StatusBadGateway, "upstream_error", "malformed token response from the vend function", provider, 0)
		return
	}
	if len(tok.DPoPProofs) > 0 {
		t := *tok
		t.DPoPProof, t.DPoPProofs = tok.DPoPProofs[0], nil
		if pooled {
			c.pool.put(k, req.DPoPNonce, t, exp, tok.DPoPProofs[1:], c.now())
		}
		tok = &t
	}
	c.writeProof(w, *tok)
}

func (c *Cache) writeProof(w http.ResponseWriter, tok client.Token) {
	exp, _ := time.Parse(time.RFC3339, tok.ExpiresAt)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(wire.TokenResponse{Provider: tok.Provider, AccessToken: tok.AccessToken, TokenType: tok.TokenType,
		ExpiresIn: int64(math.Floor(exp.Sub(c.now()).Seconds())), ExpiresAt: tok.ExpiresAt, IssuedAt: tok.IssuedAt, Scope: tok.Scope,
		DPoPProof: tok.DPoPProof})
}

// WithProofPool makes the cache ask the vend function for size proofs at
// once (2 to MaxProofPool; dpop_count) and hand them out one per request
// (proofpool.go); other sizes leave the pool off. It returns c.
func (c *Cache) WithProofPool(size int) *Cache {
	c.pool = nil
	if size > 1 && size <= MaxProofPool {
		c.pool = newProofPool(size)
	}
	return c
}
