package httpapi

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// ProofVendor is what a guarded vendor (gate.Gate) adds for DPoP: a token
// with a proof for the caller's next request (docs/design.md §5).
type ProofVendor interface {
	TokenProof(ctx context.Context, req vend.Request, r dpop.Request) (vend.Token, string, error)
}

// proofParams are the token route's DPoP parameters.
var proofParams = []string{"dpop_htm", "dpop_htu", "dpop_nonce"}

// wantsProof reports whether a token request names any DPoP parameter.
func wantsProof(r *http.Request) bool {
	if !strings.Contains(r.URL.RawQuery, "dpop_") {
		return false
	}
	q, _ := url.ParseQuery(r.URL.RawQuery)
	for _, p := range proofParams {
		if q.Has(p) {
			return true
		}
	}
	return false
}

// tokenProof answers GET /v1/tokens/{provider}?dpop_htm=…&dpop_htu=…
// [&dpop_nonce=…]: the token and a proof for that request.
func (h *Handler) tokenProof(w http.ResponseWriter, r *http.Request) {
	req, err := vendRequest(r, true, proofParams...)
	if err == nil {
		pv, ok := h.v.(ProofVendor)
		if !ok {
			err = wire.Invalid("this vendor signs no DPoP proofs")
		} else {
			q := r.URL.Query()
			if q.Get("dpop_htm") == "" || q.Get("dpop_htu") == "" {
				err = wire.Invalid("a DPoP proof needs both dpop_htm and dpop_htu")
			} else {
				var t vend.Token
				var proof string
				t, proof, err = pv.TokenProof(r.Context(), req, dpop.Request{Method: q.Get("dpop_htm"), Target: q.Get("dpop_htu"), Nonce: q.Get("dpop_nonce")})
				if err == nil {
					if rec, ok := w.(*statusRecorder); ok {
						rec.source = t.Source
					}
					resp := wire.NewTokenResponse(t, h.now())
					resp.DPoPProof = proof
					writeJSON(w, http.StatusOK, resp)
					return
				}
			}
		}
	}
	h.fail(w, r, req.Provider, err)
}
