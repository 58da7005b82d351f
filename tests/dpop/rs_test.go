package dpop

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/provider"
)

func keyDef(t testing.TB, name string) *provider.Definition {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	d := &provider.Definition{Name: name, TokenURL: "https://as.example/token", ClientID: "c", ClientSecret: "secret-1",
		DPoPPrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	return d
}

// world: a resource server accepting tokens "tok-a" (bound to key a) and
// "tok-b" (bound to key b), and a prover holding both keys.
type world struct {
	rs     *Server
	ts     *httptest.Server
	prover *dpop.Prover
	a, b   *provider.Definition
}

func newWorld(t *testing.T) *world {
	w := &world{prover: dpop.New(assertion.New(nil)), a: keyDef(t, "a"), b: keyDef(t, "b")}
	ja, _ := w.prover.Thumbprint(context.Background(), w.a)
	jb, _ := w.prover.Thumbprint(context.Background(), w.b)
	bound := map[string]string{"tok-a": ja, "tok-b": jb}
	w.rs = &Server{JKTOf: func(tok string) (string, error) {
		if j, ok := bound[tok]; ok {
			return j, nil
		}
		return "", errors.New("unknown token")
	}}
	w.ts = httptest.NewServer(w.rs)
	t.Cleanup(w.ts.Close)
	return w
}

func (w *world) proof(t *testing.T, def *provider.Definition, method, url, token, nonce string) string {
	t.Helper()
	p, err := w.prover.Sign(context.Background(), def, dpop.Request{Method: method, Target: url, AccessToken: token, Nonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	return p.JWT
}

func (w *world) send(t *testing.T, method, url, auth, proof string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if proof != "" {
		req.Header.Set("DPoP", proof)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// The resource server accepts a proper proof and refuses every other case
// RFC 9449 §4.3 and §7 name, so the vendor's proofs are checked by a
// server that would notice a wrong one.
func TestResourceServerChecksProofs(t *testing.T) {
	w := newWorld(t)
	url := w.ts.URL + "/accounts"
	good := w.proof(t, w.a, "GET", url+"?page=2", "tok-a", "")
	if r := w.send(t, "GET", url+"?page=2", "DPoP tok-a", good); r.StatusCode != 200 {
		t.Fatalf("a proper proof refused: %v", w.rs.Refusals())
	}
	cases := []struct {
		name, method, url, auth, proof, why string
	}{
		{"token without a proof", "GET", url, "DPoP tok-a", "", "want one DPoP header"},
		{"as a bearer token", "GET", url, "Bearer tok-a", w.proof(t, w.a, "GET", url, "tok-a", ""), "no DPoP-bound token"},
		{"proof for another URL", "GET", url, "DPoP tok-a", w.proof(t, w.a, "GET", w.ts.URL+"/other", "tok-a", ""), "htu"},
		{"proof for another method", "POST", url, "DPoP tok-a", w.proof(t, w.a, "GET", url, "tok-a", ""), "htm"},
		{"replayed proof", "GET", url + "?page=2", "DPoP tok-a", good, "jti replayed"},
		{"proof for another token", "GET", url, "DPoP tok-a", w.proof(t, w.a, "GET", url, "tok-b", ""), "ath"},
		{"proof by another key", "GET", url, "DPoP tok-a", w.proof(t, w.b, "GET", url, "tok-a", ""), "another key"},
		{"tampered proof", "GET", url, "DPoP tok-a", tamper(w.proof(t, w.a, "GET", url, "tok-a", "")), "signature"},
	}
	for _, c := range cases {
		before := len(w.rs.Refusals())
		if r := w.send(t, c.method, c.url, c.auth, c.proof); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: status %d", c.name, r.StatusCode)
			continue
		}
		got := w.rs.Refusals()
		if len(got) != before+1 || !strings.Contains(got[before], c.why) {
			t.Errorf("%s: refused for %q, want %q", c.name, got[len(got)-1], c.why)
		}
	}
	// An old proof is refused (iat outside the window).
	w.rs.Now = func() time.Time { return time.Now().Add(5 * time.Minute) }
	if r := w.send(t, "GET", url, "DPoP tok-a", w.proof(t, w.a, "GET", url, "tok-a", "")); r.StatusCode != 401 {
		t.Fatal("a stale proof was accepted")
	}
}

// tamper changes one claim and keeps the signature.
func tamper(jwt string) string {
	parts := strings.Split(jwt, ".")
	parts[1] = parts[1][:len(parts[1])-2] + "AA"
	return strings.Join(parts, ".")
}

// fetcher stands in for the vendor: token tok-a of provider a, with the
// proof the request asks for.
type fetcher struct {
	w     *world
	t     *testing.T
	calls int
}

func (f *fetcher) Fetch(ctx context.Context, r client.Request) (*client.Token, error) {
	f.calls++
	p, err := f.w.prover.Sign(ctx, f.w.a, dpop.Request{Method: r.DPoPMethod, Target: r.DPoPURL, AccessToken: "tok-a", Nonce: r.DPoPNonce})
	if err != nil {
		return nil, err
	}
	return &client.Token{Provider: "a", AccessToken: "tok-a", TokenType: "DPoP", ExpiresAt: time.Now().Add(time.Hour).UTC().Format(time.RFC3339), DPoPProof: p.JWT}, nil
}

// The client's transport answers a resource server's nonce demand once,
// then keeps using the nonce.
func TestTransportAnswersNonceDemand(t *testing.T) {
	w := newWorld(t)
	w.rs.Nonce = "rs-nonce-1"
	f := &fetcher{w: w, t: t}
	hc := &http.Client{Transport: client.New(f).DPoPTransport(nil, client.Request{Provider: "a"})}
	for i := range 2 {
		resp, err := hc.Get(w.ts.URL + "/accounts?x=1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %v", i, resp.StatusCode, w.rs.Refusals())
		}
	}
	if f.calls != 3 || len(w.rs.Refusals()) != 1 || w.rs.Accepted() != 2 {
		t.Fatalf("%d proofs asked, refusals %v: want 3 (one nonce demand, then the nonce remembered)", f.calls, w.rs.Refusals())
	}
}
