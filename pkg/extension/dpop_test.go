package extension

import (
	"context"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/client"
)

// proofVend records the DPoP parameters it was asked with.
type proofVend struct {
	fakeVend
	got []client.Request
}

func (p *proofVend) Fetch(ctx context.Context, r client.Request) (*client.Token, error) {
	p.got = append(p.got, r)
	t, err := p.fakeVend.Fetch(ctx, r)
	if err == nil && r.DPoPMethod != "" {
		t.TokenType, t.DPoPProof = "DPoP", "proof-for-"+r.DPoPMethod+"-"+r.DPoPURL+"-"+r.DPoPNonce
	}
	return t, err
}

// A proof is for one request: every ask reaches the vend function with its
// parameters (never a cached proof), and the answer carries dpop_proof.
func TestLocalEndpointPassesProofRequests(t *testing.T) {
	f := &proofVend{}
	h := New(f, secret, nil).Handler()
	for range 2 {
		rec, m := do(h, "GET", "/v1/tokens/bank?scope=read&dpop_htm=POST&dpop_htu=https%3A%2F%2Frs.example%2Fpay&dpop_nonce=n1", "", secret)
		if rec.Code != 200 || m["dpop_proof"] != "proof-for-POST-https://rs.example/pay-n1" || m["token_type"] != "DPoP" {
			t.Fatalf("%d %v", rec.Code, m)
		}
	}
	if len(f.got) != 2 {
		t.Fatalf("%d fetches for two proofs", len(f.got))
	}
	rec, m := do(h, "GET", "/v1/tokens/bank?dpop_htm=POST", "", secret)
	if rec.Code != 400 || m["error"] != "invalid_request" || len(f.got) != 2 {
		t.Fatalf("dpop_htm without dpop_htu: %d %v", rec.Code, m)
	}
	// A plain request is served from the cache as before, without a proof.
	rec, m = do(h, "GET", "/v1/tokens/bank?scope=read", "", secret)
	if rec.Code != 200 || m["dpop_proof"] != nil {
		t.Fatalf("plain request: %d %v", rec.Code, m)
	}
}
