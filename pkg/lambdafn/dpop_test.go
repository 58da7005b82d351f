package lambdafn_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// proofCore answers TokenProof with a proof naming what it was asked.
type proofCore struct{ asked []dpop.Request }

func (p *proofCore) Token(context.Context, vend.Request) (vend.Token, error) {
	return vend.Token{Provider: "bank", AccessToken: "t", TokenType: "DPoP", ExpiresAt: time.Now().Add(time.Hour)}, nil
}

func (p *proofCore) Rejected(ctx context.Context, r vend.Request, _ string) (vend.Token, error) {
	return p.Token(ctx, r)
}

func (p *proofCore) TokenProof(_ context.Context, _ vend.Request, r dpop.Request) (vend.Token, string, error) {
	p.asked = append(p.asked, r)
	return vend.Token{Provider: "bank", AccessToken: "t", TokenType: "DPoP", ExpiresAt: time.Now().Add(time.Hour)}, "proof:" + r.Method + " " + r.Target + " " + r.Nonce, nil
}

func TestInvokeProofRequests(t *testing.T) {
	core := &proofCore{}
	invoke := lambdafn.Invoke(core, nil, slog.New(slog.DiscardHandler), nil)
	ctx := context.Background()
	out, err := invoke(ctx, json.RawMessage(`{"provider":"bank","dpop_htm":"GET","dpop_htu":"https://rs.example/a","dpop_nonce":"n"}`))
	if err != nil || out.DPoPProof != "proof:GET https://rs.example/a n" || out.TokenType != "DPoP" {
		t.Fatalf("%+v %v", out, err)
	}
	for _, ev := range []string{
		`{"provider":"bank","dpop_htm":"GET"}`,
		`{"provider":"bank","dpop_htu":"https://rs.example/a"}`,
		`{"provider":"bank","dpop_htm":"GET","dpop_htu":"https://rs.example/a","rejected_token_sha256":"00"}`,
	} {
		if _, err := invoke(ctx, json.RawMessage(ev)); typeName(err) != "InvalidRequest" {
			t.Errorf("%s: %v", ev, err)
		}
	}
	if len(core.asked) != 1 {
		t.Fatalf("%d proofs signed, want 1", len(core.asked))
	}
	// A plain token request signs nothing and carries no proof.
	if out, err := invoke(ctx, json.RawMessage(`{"provider":"bank"}`)); err != nil || out.DPoPProof != "" || len(core.asked) != 1 {
		t.Fatalf("plain: %+v %v", out, err)
	}
	// A core that signs no proofs refuses the request clearly.
	p := newParts(t)
	if _, err := lambdafn.Invoke(p.v, nil, slog.New(slog.DiscardHandler), nil)(ctx, json.RawMessage(`{"provider":"`+firstProvider(p)+`","dpop_htm":"GET","dpop_htu":"https://rs.example/a"}`)); typeName(err) != "InvalidRequest" {
		t.Fatalf("vendor without proofs: %v", err)
	}
}

func firstProvider(p parts) string {
	for name := range p.up.Defs {
		return name
	}
	return ""
}
