package gate

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// fakeCore vends one token of the configured type and counts calls.
type fakeCore struct {
	Core
	calls     int
	rejected  int
	newJKT    string
	typ, jkt  string
	tokenText string
}

// Rejected replaces the token with one bound to newJKT ("" keeps jkt).
func (f *fakeCore) Rejected(ctx context.Context, req vend.Request, _ string) (vend.Token, error) {
	f.rejected++
	if f.newJKT != "" {
		f.jkt = f.newJKT
	}
	return f.Token(ctx, req)
}

func (f *fakeCore) Token(_ context.Context, req vend.Request) (vend.Token, error) {
	f.calls++
	return vend.Token{Provider: req.Provider, AccessToken: f.tokenText, TokenType: f.typ, JKT: f.jkt, ExpiresAt: time.Now().Add(time.Hour)}, nil
}

type defs map[string]*provider.Definition

func (d defs) Get(_ context.Context, name string) (*provider.Definition, error) {
	if p, ok := d[name]; ok {
		return p, nil
	}
	return nil, errors.New("unknown")
}

// fakeProver signs "proof-<n>" with thumbprint jkt.
type fakeProver struct {
	calls int
	jkt   string
}

func (f *fakeProver) Sign(context.Context, *provider.Definition, dpop.Request) (dpop.Proof, error) {
	f.calls++
	return dpop.Proof{JWT: "proof-jws", JKT: f.jkt}, nil
}

func dpopDef(t *testing.T, name string, callers ...string) *provider.Definition {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	d := &provider.Definition{Name: name, TokenURL: "https://as.example/token", ClientID: "c", ClientSecret: "s",
		DPoPPrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), AllowedCallers: callers}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	return d
}

// TokenProof decides before the core or the signer run, refuses bad
// requests and providers without a DPoP key, hands a Bearer token out
// without a proof, refuses a token bound to another key than the one
// signing, and writes exactly one audit record per request, with
// dpop_proof only when a proof was issued and never the proof.
func TestTokenProofDecidesSignsAndAudits(t *testing.T) {
	ds := defs{
		"bank":   dpopDef(t, "bank", "arn:aws:iam::123456789012:role/payments"),
		"plain":  &provider.Definition{Name: "plain", TokenURL: "https://as.example/token", ClientID: "c", ClientSecret: "s"},
		"opened": dpopDef(t, "opened"),
	}
	ds["plain"].Validate()
	var audit bytes.Buffer
	core := &fakeCore{typ: "DPoP", jkt: "jkt-1", tokenText: "tok"}
	prover := &fakeProver{jkt: "jkt-1"}
	g := New(core, ds, slog.New(slog.NewJSONHandler(&audit, nil)), nil).WithProver(prover)
	allowed := identity.NewContext(context.Background(), identity.FromIAM(identity.PathAPI, "arn:aws:sts::123456789012:assumed-role/payments/s", "123456789012", ""))
	other := identity.NewContext(context.Background(), identity.FromIAM(identity.PathAPI, "arn:aws:sts::123456789012:assumed-role/other/s", "123456789012", ""))
	good := dpop.Request{Method: "GET", Target: "https://rs.example/a"}
	records := func() int { return bytes.Count(audit.Bytes(), []byte(`"msg":"audit"`)) }

	_, p, err := g.TokenProof(allowed, vend.Request{Provider: "bank"}, good)
	if err != nil || p != "proof-jws" || core.calls != 1 || prover.calls != 1 || records() != 1 || !strings.Contains(audit.String(), `"dpop_proof":"issued"`) {
		t.Fatalf("granted: %q %v (core %d, signs %d, records %d)", p, err, core.calls, prover.calls, records())
	}
	if strings.Contains(audit.String(), "proof-jws") {
		t.Fatal("the audit record holds the proof")
	}
	for name, c := range map[string]struct {
		ctx      context.Context
		provider string
		r        dpop.Request
		reach    bool // whether the core may be asked
	}{
		"caller outside allowed_callers": {other, "bank", good, false},
		"relative URL":                   {allowed, "bank", dpop.Request{Method: "GET", Target: "/a"}, false},
		"bad nonce":                      {allowed, "bank", dpop.Request{Method: "GET", Target: "https://rs.example/a", Nonce: "a b"}, false},
		"provider without a DPoP key":    {allowed, "plain", good, false},
	} {
		before, recs := core.calls, records()
		if _, p, err := g.TokenProof(c.ctx, vend.Request{Provider: c.provider}, c.r); err == nil || p != "" {
			t.Errorf("%s: granted", name)
		}
		if core.calls != before || prover.calls != 1 || records() != recs+1 {
			t.Errorf("%s: core %d→%d, signs %d, records %d→%d", name, before, core.calls, prover.calls, recs, records())
		}
	}
	// A Bearer token: no proof signed, none returned, audited without dpop_proof.
	core.typ = "Bearer"
	audit.Reset()
	if tok, p, err := g.TokenProof(allowed, vend.Request{Provider: "opened"}, good); err != nil || p != "" || tok.TokenType != "Bearer" || prover.calls != 1 || strings.Contains(audit.String(), "dpop_proof") {
		t.Fatalf("bearer: %q %v", p, err)
	}
	// A token bound to another key than the one that signs now (a KMS
	// alias re-pointed): replaced once through the rejected-token path,
	// then proven with the new key.
	core.typ, prover.jkt, core.newJKT = "DPoP", "jkt-2", "jkt-2"
	if tok, p, err := g.TokenProof(allowed, vend.Request{Provider: "opened"}, good); err != nil || p == "" || tok.JKT != "jkt-2" || core.rejected != 1 {
		t.Fatalf("key moved: %q %v (rejected %d)", p, err, core.rejected)
	}
	// Still another key after the replacement: refused, no proof.
	prover.jkt, core.newJKT = "jkt-3", ""
	if _, p, err := g.TokenProof(allowed, vend.Request{Provider: "opened"}, good); !errors.Is(err, errKeyMoved) || p != "" || core.rejected != 2 {
		t.Fatalf("key moved twice: %q %v", p, err)
	}
}
