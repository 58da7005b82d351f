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

// invokeProof answers an event naming dpop_htm and dpop_htu: the token and
// a proof for that request, in *proof.
func invokeProof(ctx context.Context, v Vendor, ev InvokeEvent, req vend.Request, proof *string) (vend.Token, error) {
	pv, ok := v.(ProofVendor)
	switch {
	case !ok:
		return vend.Token{}, wire.Invalid("this vendor signs no DPoP proofs")
	case ev.DPoPHTM == "" || ev.DPoPHTU == "":
		return vend.Token{}, wire.Invalid("a DPoP proof needs both dpop_htm and dpop_htu")
	case ev.RejectedTokenSHA256 != "":
		return vend.Token{}, wire.Invalid("ask for a DPoP proof with the replacement token in a request of its own")
	}
	t, p, err := pv.TokenProof(ctx, req, dpop.Request{Method: ev.DPoPHTM, Target: ev.DPoPHTU, Nonce: ev.DPoPNonce})
	*proof = p
	return t, err
}
