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
// one request, so it is asked of the vend function every time (which
// decides and audits as for the token); the key never leaves the vendor.
func (c *Cache) proof(w http.ResponseWriter, r *http.Request, provider string, q url.Values) {
	if q.Get("dpop_htm") == "" || q.Get("dpop_htu") == "" {
		writeError(w, http.StatusBadRequest, "invalid_request", "a DPoP proof needs both dpop_htm and dpop_htu", provider, 0)
		return
	}
	req := client.Request{Provider: provider, Scope: q.Get("scope"), Resource: q.Get("resource"), Audience: q.Get("audience"),
		DPoPMethod: q.Get("dpop_htm"), DPoPURL: q.Get("dpop_htu"), DPoPNonce: q.Get("dpop_nonce")}
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
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(wire.TokenResponse{Provider: tok.Provider, AccessToken: tok.AccessToken, TokenType: tok.TokenType,
		ExpiresIn: int64(math.Floor(exp.Sub(c.now()).Seconds())), ExpiresAt: tok.ExpiresAt, IssuedAt: tok.IssuedAt, Scope: tok.Scope,
		DPoPProof: tok.DPoPProof})
}
