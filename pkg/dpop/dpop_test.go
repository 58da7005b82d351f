package dpop

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/provider"
)

func pemOf(t testing.TB, k any) string {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func def(t testing.TB, key, alg string) *provider.Definition {
	d := &provider.Definition{Name: "p", TokenURL: "https://as.example/token?tenant=1", ClientID: "c", ClientSecret: "s",
		DPoPPrivateKey: key, DPoPSigningAlg: alg}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	return d
}

// verify checks a proof as RFC 9449 §4.3 asks of its signature and
// header, and returns its claims and the embedded key's thumbprint.
func verify(t *testing.T, proof string) (map[string]any, string, string) {
	t.Helper()
	msg, err := jws.Parse([]byte(proof))
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Signatures()[0].ProtectedHeaders()
	var typ string
	h.Get("typ", &typ)
	key, ok := h.JWK()
	if typ != "dpop+jwt" || !ok {
		t.Fatalf("header typ %q jwk %v", typ, ok)
	}
	if _, isPriv := key.(jwk.ECDSAPrivateKey); isPriv {
		t.Fatal("the proof carries a private key")
	}
	alg, _ := h.Algorithm()
	if _, err := jws.Verify([]byte(proof), jws.WithKey(alg, key)); err != nil {
		t.Fatalf("signature does not verify with the embedded jwk: %v", err)
	}
	var c map[string]any
	json.Unmarshal(msg.Payload(), &c)
	pub, _ := jwk.PublicRawKeyOf(key)
	jkt, err := provider.Thumbprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	return c, jkt, alg.String()
}

func TestProofClaimsAndSignature(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	now := time.Unix(1_800_000_000, 0)
	p := New(assertion.New(nil)).WithClock(func() time.Time { return now })
	ctx := context.Background()
	for _, tc := range []struct {
		name, key, alg, wantAlg string
	}{
		{"ec", pemOf(t, ec), "", "ES256"},
		{"rsa-default", pemOf(t, rk), "", "PS256"},
		{"rsa-rs256", pemOf(t, rk), "RS256", "RS256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := def(t, tc.key, tc.alg)
			pr, err := p.Sign(ctx, d, Request{Method: "GET", Target: "https://rs.example/a/b?x=1#frag", AccessToken: "tok", Nonce: "n-1"})
			if err != nil {
				t.Fatal(err)
			}
			c, jkt, alg := verify(t, pr.JWT)
			if alg != tc.wantAlg || jkt != pr.JKT || c["htm"] != "GET" || c["htu"] != "https://rs.example/a/b" ||
				c["iat"] != float64(now.Unix()) || c["ath"] != ATH("tok") || c["nonce"] != "n-1" || c["jti"] == "" {
				t.Fatalf("alg %s claims %v", alg, c)
			}
			tp, _ := p.Thumbprint(ctx, d)
			if tp != pr.JKT {
				t.Fatalf("Thumbprint %s, proof's %s", tp, pr.JKT)
			}
			again, _ := p.Sign(ctx, d, Request{Method: "GET", Target: "https://rs.example/a/b"})
			c2, _, _ := verify(t, again.JWT)
			if c2["jti"] == c["jti"] || c2["ath"] != nil || c2["nonce"] != nil {
				t.Fatalf("second proof %v", c2)
			}
		})
	}
}

func TestTokenProofUsesRememberedNonce(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p := New(assertion.New(nil))
	d := def(t, pemOf(t, ec), "")
	jwt, _, err := p.TokenProof(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	c, _, _ := verify(t, jwt)
	if c["nonce"] != nil || c["htm"] != "POST" || c["htu"] != "https://as.example/token" {
		t.Fatalf("claims %v", c)
	}
	p.SetNonce(d, `bad"nonce`) // malformed: ignored
	p.SetNonce(d, "srv-nonce")
	jwt, _, _ = p.TokenProof(context.Background(), d)
	if c, _, _ := verify(t, jwt); c["nonce"] != "srv-nonce" {
		t.Fatalf("nonce %v", c["nonce"])
	}
	other := *d
	other.Name = "q"
	if p.Nonce(&other) != "" {
		t.Fatal("a nonce leaked to another provider")
	}
}

func TestSignRefusesBadInput(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p := New(assertion.New(nil))
	d := def(t, pemOf(t, ec), "")
	ctx := context.Background()
	for _, r := range []Request{
		{Method: "GET", Target: "/relative"},
		{Method: "GET", Target: "ftp://x.example/"},
		{Method: "get", Target: "https://x.example/"},
		{Method: "GET", Target: "https://u:p@x.example/"},
		{Method: "GET", Target: "https://x.example/", Nonce: "a b"},
		{Method: "GET", Target: "https://x.example/", Nonce: strings.Repeat("n", 513)},
	} {
		if _, err := p.Sign(ctx, d, r); err == nil {
			t.Errorf("%+v: signed", r)
		}
	}
	plain := &provider.Definition{Name: "p", TokenURL: "https://as.example/token", ClientID: "c", ClientSecret: "s"}
	if _, err := p.Sign(ctx, plain, Request{Method: "GET", Target: "https://x.example/"}); err != ErrNoKey {
		t.Fatalf("provider without a DPoP key: %v", err)
	}
}
