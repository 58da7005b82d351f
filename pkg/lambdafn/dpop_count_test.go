package lambdafn_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// proofsCore also answers TokenProofs (gate.Gate's dpop_count).
type proofsCore struct {
	proofCore
	counts []int
}

func (p *proofsCore) TokenProofs(_ context.Context, _ vend.Request, r dpop.Request, n int) (vend.Token, []string, error) {
	p.counts = append(p.counts, n)
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("proof-%d:%s %s", i, r.Method, r.Target)
	}
	return vend.Token{Provider: "bank", AccessToken: "t", TokenType: "DPoP", ExpiresAt: time.Now().Add(time.Hour)}, out, nil
}

// dpop_count asks for that many proofs at once, answered in dpop_proofs
// (dpop_proof left out); outside 1..8, without dpop_htm/dpop_htu, or to a
// vendor that cannot sign several, it is InvalidRequest and nothing is
// signed.
func TestInvokeProofCount(t *testing.T) {
	core := &proofsCore{}
	invoke := lambdafn.Invoke(core, nil, slog.New(slog.DiscardHandler), nil)
	ctx := context.Background()
	out, err := invoke(ctx, json.RawMessage(`{"provider":"bank","dpop_htm":"GET","dpop_htu":"https://rs.example/a","dpop_count":3}`))
	if err != nil || len(out.DPoPProofs) != 3 || out.DPoPProof != "" || out.DPoPProofs[2] != "proof-2:GET https://rs.example/a" {
		t.Fatalf("%+v %v", out, err)
	}
	b, _ := json.Marshal(out)
	var m map[string]any
	json.Unmarshal(b, &m)
	if _, ok := m["dpop_proof"]; ok || m["dpop_proofs"] == nil {
		t.Fatalf("answer shape: %s", b)
	}
	for _, ev := range []string{
		`{"provider":"bank","dpop_htm":"GET","dpop_htu":"https://rs.example/a","dpop_count":0}`,
		`{"provider":"bank","dpop_htm":"GET","dpop_htu":"https://rs.example/a","dpop_count":9}`,
		`{"provider":"bank","dpop_count":2}`,
		`{"provider":"bank","dpop_htm":"GET","dpop_htu":"https://rs.example/a","dpop_count":"2"}`,
	} {
		if _, err := invoke(ctx, json.RawMessage(ev)); typeName(err) != "InvalidRequest" {
			t.Errorf("%s: %v", ev, err)
		}
	}
	if len(core.counts) != 1 {
		t.Fatalf("signed for %d requests, want 1", len(core.counts))
	}
	// A vendor signing one proof at a time refuses dpop_count clearly.
	single := lambdafn.Invoke(&proofCore{}, nil, slog.New(slog.DiscardHandler), nil)
	if _, err := single(ctx, json.RawMessage(`{"provider":"bank","dpop_htm":"GET","dpop_htu":"https://rs.example/a","dpop_count":2}`)); typeName(err) != "InvalidRequest" {
		t.Fatalf("vendor without TokenProofs: %v", err)
	}
}
