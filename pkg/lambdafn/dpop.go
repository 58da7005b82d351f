package lambdafn

import (
	"context"

	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// ProofVendor is what a guarded vendor (gate.Gate) adds for DPoP.
type ProofVendor interface {
	TokenProof(ctx context.Context, req vend.Request, r dpop.Request) (vend.Token, string, error)
}

// ProofsVendor signs several proofs for one request (gate.Gate).
type ProofsVendor interface {
	TokenProofs(ctx context.Context, req vend.Request, r dpop.Request, n int) (vend.Token, []string, error)
}

// invokeProof answers an event naming dpop_htm and dpop_htu: the token and
// a proof for that request, in *proof, or with dpop_count the proofs, in
// *proofs.
func invokeProof(ctx context.Context, v Vendor, ev InvokeEvent, req vend.Request, proof *string, proofs *[]string) (vend.Token, error) {
	pv, ok := v.(ProofVendor)
	switch {
	case !ok:
		return vend.Token{}, wire.Invalid("this vendor signs no DPoP proofs")
	case ev.DPoPHTM == "" || ev.DPoPHTU == "":
		return vend.Token{}, wire.Invalid("a DPoP proof needs both dpop_htm and dpop_htu")
	case ev.RejectedTokenSHA256 != "":
		return vend.Token{}, wire.Invalid("ask for a DPoP proof with the replacement token in a request of its own")
	}
	if ev.DPoPCount != nil {
		pvs, ok := v.(ProofsVendor)
		switch {
		case !ok:
			return vend.Token{}, wire.Invalid("this vendor signs no DPoP proofs")
		case *ev.DPoPCount < 1 || *ev.DPoPCount > dpop.MaxProofs:
			return vend.Token{}, wire.Invalid("dpop_count must be from 1 to %d", dpop.MaxProofs)
		}
		t, ps, err := pvs.TokenProofs(ctx, req, dpop.Request{Method: ev.DPoPHTM, Target: ev.DPoPHTU, Nonce: ev.DPoPNonce}, *ev.DPoPCount)
		*proofs = ps
		return t, err
	}
	t, p, err := pv.TokenProof(ctx, req, dpop.Request{Method: ev.DPoPHTM, Target: ev.DPoPHTU, Nonce: ev.DPoPNonce})
	*proof = p
	return t, err
}
