package gate

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// TokenProofs (dpop_count) is one request: one decision before the core
// and the signer, one audit record saying how many proofs were issued
// (never a proof); n outside 1..8 is refused with neither run.
func TestTokenProofsOneDecisionOneRecord(t *testing.T) {
	ds := defs{"bank": dpopDef(t, "bank", "arn:aws:iam::123456789012:role/payments")}
	var audit bytes.Buffer
	core := &fakeCore{typ: "DPoP", jkt: "jkt-1", tokenText: "tok"}
	prover := &fakeProver{jkt: "jkt-1"}
	g := New(core, ds, slog.New(slog.NewJSONHandler(&audit, nil)), nil).WithProver(prover)
	allowed := identity.NewContext(context.Background(), identity.FromIAM(identity.PathInvoke, "arn:aws:sts::123456789012:assumed-role/payments/s", "123456789012", ""))
	other := identity.NewContext(context.Background(), identity.FromIAM(identity.PathInvoke, "arn:aws:sts::123456789012:assumed-role/other/s", "123456789012", ""))
	good := dpop.Request{Method: "GET", Target: "https://rs.example/a"}
	records := func() int { return bytes.Count(audit.Bytes(), []byte(`"msg":"audit"`)) }

	_, ps, err := g.TokenProofs(allowed, vend.Request{Provider: "bank"}, good, 4)
	if err != nil || len(ps) != 4 || core.calls != 1 || prover.calls != 4 || records() != 1 ||
		!strings.Contains(audit.String(), `"dpop_proof":"issued"`) || !strings.Contains(audit.String(), `"dpop_proofs":4`) || strings.Contains(audit.String(), "proof-jws") {
		t.Fatalf("granted: %d proofs, %v (core %d, signs %d, records %d)\n%s", len(ps), err, core.calls, prover.calls, records(), audit.String())
	}
	for name, c := range map[string]struct {
		ctx context.Context
		n   int
	}{
		"caller outside allowed_callers": {other, 4},
		"count 9":                        {allowed, 9},
		"count -1":                       {allowed, -1},
	} {
		recs := records()
		if _, ps, err := g.TokenProofs(c.ctx, vend.Request{Provider: "bank"}, good, c.n); err == nil || len(ps) != 0 {
			t.Errorf("%s: granted", name)
		}
		if core.calls != 1 || prover.calls != 4 || records() != recs+1 {
			t.Errorf("%s: core %d, signs %d, records %d→%d", name, core.calls, prover.calls, recs, records())
		}
	}
}
