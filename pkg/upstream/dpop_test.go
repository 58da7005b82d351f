package upstream

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

// fakeDPoP hands out numbered proofs carrying the remembered nonce.
type fakeDPoP struct {
	mu     sync.Mutex
	n      int
	nonce  string
	nonces []string // every nonce set, in order
}

func (f *fakeDPoP) TokenProof(_ context.Context, _ *provider.Definition) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	return fmt.Sprintf("proof-%d|%s", f.n, f.nonce), "jkt-1", nil
}

func (f *fakeDPoP) SetNonce(_ *provider.Definition, n string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nonce = n
	f.nonces = append(f.nonces, n)
}

func dpopDef(t *testing.T, url string) *provider.Definition {
	t.Helper()
	d := &provider.Definition{Name: "p", TokenURL: url, ClientID: "c", ClientSecret: "secret-value-1", DPoPPrivateKey: testECKeyPEM(t)}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	return d
}

// dpopServer answers with the handlers in turn (the last one repeats) and
// records each request's DPoP header.
type dpopServer struct {
	mu     sync.Mutex
	proofs []string
	steps  []func(w http.ResponseWriter)
}

func (s *dpopServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.ReadAll(r.Body)
	s.mu.Lock()
	i := len(s.proofs)
	s.proofs = append(s.proofs, r.Header.Get("DPoP"))
	if i >= len(s.steps) {
		i = len(s.steps) - 1
	}
	step := s.steps[i]
	s.mu.Unlock()
	step(w)
}

func answer(status int, body string, header ...string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

const nonceRefusal = `{"error":"use_dpop_nonce","error_description":"nonce required"}`

func TestDPoPNonceRetriedOnceAndRemembered(t *testing.T) {
	srv := &dpopServer{steps: []func(http.ResponseWriter){
		answer(400, nonceRefusal, "DPoP-Nonce", "n1"),
		answer(200, `{"access_token":"t","token_type":"dpop","expires_in":60}`, "DPoP-Nonce", "n2"),
	}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	f := &fakeDPoP{}
	c := &Client{DPoP: f, MaxAttempts: 1}
	tok, err := c.Fetch(context.Background(), dpopDef(t, ts.URL+"/token"), provider.Key{})
	if err != nil {
		t.Fatalf("the nonce refusal was not answered: %v", err)
	}
	if tok.TokenType != "DPoP" || tok.JKT != "jkt-1" {
		t.Fatalf("token_type %q jkt %q", tok.TokenType, tok.JKT)
	}
	if len(srv.proofs) != 2 || srv.proofs[0] != "proof-1|" || srv.proofs[1] != "proof-2|n1" {
		t.Fatalf("proofs sent: %q", srv.proofs)
	}
	if f.nonce != "n2" { // a success's DPoP-Nonce is remembered too
		t.Fatalf("remembered nonce %q, want n2", f.nonce)
	}
}

func TestDPoPNonceRefusedTwiceIsTransient(t *testing.T) {
	srv := &dpopServer{steps: []func(http.ResponseWriter){answer(400, nonceRefusal, "DPoP-Nonce", "n1")}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := &Client{DPoP: &fakeDPoP{}, MaxAttempts: 1}
	_, err := c.Fetch(context.Background(), dpopDef(t, ts.URL+"/token"), provider.Key{})
	re, ok := AsRetrieveError(err)
	if !ok || re.Code != "use_dpop_nonce" || re.Kind != Transient || len(srv.proofs) != 2 {
		t.Fatalf("err %v after %d requests; want a transient use_dpop_nonce after 2", err, len(srv.proofs))
	}
}

func TestDPoPAnsweredAsBearerKeepsItsType(t *testing.T) {
	srv := &dpopServer{steps: []func(http.ResponseWriter){answer(200, `{"access_token":"t","token_type":"Bearer","expires_in":60}`)}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := &Client{DPoP: &fakeDPoP{}, MaxAttempts: 1}
	tok, err := c.Fetch(context.Background(), dpopDef(t, ts.URL+"/token"), provider.Key{})
	if err != nil || tok.TokenType != "Bearer" || tok.JKT != "" {
		t.Fatalf("token %+v %v: want Bearer with no jkt", tok, err)
	}
	if srv.proofs[0] == "" {
		t.Fatal("no DPoP header sent")
	}
}

func TestNoDPoPHeaderWithoutKeyAndRefusedWithoutProver(t *testing.T) {
	srv := &dpopServer{steps: []func(http.ResponseWriter){answer(200, `{"access_token":"t","token_type":"Bearer","expires_in":60}`)}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	plain := &provider.Definition{Name: "p", TokenURL: ts.URL + "/token", ClientID: "c", ClientSecret: "s"}
	plain.Validate()
	c := &Client{DPoP: &fakeDPoP{}, MaxAttempts: 1}
	if _, err := c.Fetch(context.Background(), plain, provider.Key{}); err != nil || srv.proofs[0] != "" {
		t.Fatalf("a provider without a DPoP key: %v, DPoP header %q", err, srv.proofs[0])
	}
	_, err := (&Client{MaxAttempts: 1}).Fetch(context.Background(), dpopDef(t, ts.URL+"/token"), provider.Key{})
	if re, ok := AsRetrieveError(err); !ok || re.Kind != Permanent || re.Code != "dpop_key_invalid" || len(srv.proofs) != 1 {
		t.Fatalf("DPoP provider without a prover: %v", err)
	}
}

func testECKeyPEM(t *testing.T) string {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}
