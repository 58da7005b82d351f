package oidc

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

// pki is a test CA with the certificates the mTLS tests need.
type pki struct {
	caCert *x509.Certificate
	caKey  crypto.Signer
	caPEM  string
}

func newPKI(t *testing.T) *pki {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "token-vendor test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &pki{caCert: cert, caKey: key, caPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// issue returns a PEM certificate and key: signed by the CA, or self-signed
// when p is nil.
func (p *pki) issue(t *testing.T, cn string, server bool, notAfter time.Time) (certPEM, keyPEM string, der []byte) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	parent, signer := tmpl, crypto.Signer(key)
	if p != nil {
		parent, signer = p.caCert, p.caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})), der
}

func write(t *testing.T, dir, name, content string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// selfSignedJWKS registers a self-signed certificate the RFC 8705 §2.2 way:
// its public key with the certificate itself (x5c), from which the server
// takes the thumbprint it matches.
func selfSignedJWKS(t *testing.T, der []byte) json.RawMessage {
	cert, _ := x509.ParseCertificate(der)
	k, err := jwk.Import(cert.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(k)
	var m map[string]any
	json.Unmarshal(raw, &m)
	m["x5c"] = []string{base64.StdEncoding.EncodeToString(der)}
	b, _ := json.Marshal(map[string]any{"keys": []any{m}})
	return b
}

// logBuffer collects the vendor's log lines.
type logBuffer struct{ bytes.Buffer }

// daysLeft records the ClientCertificateDaysLeft metric per provider.
type daysLeft struct {
	vend.Observer
	got map[string]float64
}

func (d *daysLeft) Value(provider, metric, _ string, v float64) {
	if metric == "ClientCertificateDaysLeft" {
		d.got[provider] = v
	}
}

func TestMutualTLSAgainstOIDCProvider(t *testing.T) {
	ca := newPKI(t)
	dir := t.TempDir()
	srvCert, srvKey, _ := ca.issue(t, "127.0.0.1", true, time.Now().Add(24*time.Hour))
	goodCert, goodKey, _ := ca.issue(t, "svc-mtls", false, time.Now().Add(10*24*time.Hour)) // expires in 10 days
	otherCert, otherKey, _ := newPKI(t).issue(t, "svc-mtls", false, time.Now().Add(365*24*time.Hour))
	selfCert, selfKey, selfDER := (*pki)(nil).issue(t, "svc-self", false, time.Now().Add(365*24*time.Hour))
	srv := startWith(t, []registration{
		{ClientID: "svc-mtls", Auth: provider.AuthTLS, SubjectDN: "CN=svc-mtls"},
		{ClientID: "svc-self", Auth: provider.AuthSelfSignedTLS, JWKS: selfSignedJWKS(t, selfDER)},
	}, &tlsFiles{Key: write(t, dir, "srv.key", srvKey), Cert: write(t, dir, "srv.crt", srvCert), CA: write(t, dir, "ca.crt", ca.caPEM)})

	mk := func(name, id, method, cert, key, tokenURL string) *provider.Definition {
		d := &provider.Definition{Name: name, TokenURL: tokenURL, ClientID: id, AuthMethod: method, ClientCertificate: cert, ClientKey: key}
		if err := d.Validate(); err != nil {
			t.Fatal(err)
		}
		return d
	}
	// A second provider on plain client secrets, whose server records
	// whether a client certificate was ever presented to it.
	var presented atomic.Int32
	other := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) > 0 {
			presented.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"other-token","token_type":"Bearer","expires_in":3600}`))
	}))
	other.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	other.StartTLS()
	defer other.Close()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(ca.caPEM))
	roots.AddCert(other.Certificate())

	defs := map[string]*provider.Definition{
		"mtls":  mk("mtls", "svc-mtls", provider.AuthTLS, goodCert, goodKey, srv.issuer+"/token"),
		"self":  mk("self", "svc-self", provider.AuthSelfSignedTLS, selfCert, selfKey, srv.issuer+"/token"),
		"wrong": mk("wrong", "svc-mtls", provider.AuthTLS, otherCert, otherKey, srv.issuer+"/token"),
		"plain": {Name: "plain", TokenURL: other.URL + "/token", ClientID: "p", ClientSecret: "p-secret", AuthMethod: provider.AuthPost},
	}
	logs := &logBuffer{}
	metrics := &daysLeft{Observer: vendtest.NewEvents(), got: map[string]float64{}}
	up := &upstream.Client{HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}, MaxAttempts: 1}
	v := vend.New(vendtest.NewProviders(defs), up, store.NewMemory(nil), vend.Options{DisableRefreshAhead: true, L1MaxAge: -1,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)), Observer: metrics})
	ctx := context.Background()
	for _, p := range []string{"mtls", "self"} {
		first, err := v.Token(ctx, vend.Request{Provider: p, Scope: "read", MinTTL: -1})
		if err != nil || first.Source != vend.FromUpstream {
			t.Fatalf("%s: %v %v", p, first.Source, err)
		}
		if again, err := v.Token(ctx, vend.Request{Provider: p, Scope: "read", MinTTL: -1}); err != nil || again.AccessToken != first.AccessToken {
			t.Fatalf("%s not cached: %v", p, err)
		}
	}
	// A certificate from another CA, with the right subject, is refused.
	_, err := v.Token(ctx, vend.Request{Provider: "wrong", MinTTL: -1})
	if re, ok := upstream.AsRetrieveError(err); !ok || re.Kind != upstream.Permanent || re.Code != "invalid_client" {
		t.Fatalf("untrusted certificate: want upstream_rejected (invalid_client), got %v", err)
	}
	// Certificates go only to their own provider's endpoints.
	if _, err := v.Token(ctx, vend.Request{Provider: "plain", MinTTL: -1}); err != nil {
		t.Fatal(err)
	}
	if n := presented.Load(); n != 0 {
		t.Fatalf("a client certificate was presented to another provider %d times", n)
	}
	// The certificate expiring in 10 days is reported: a warning and the
	// metric; the one with a year left only by the metric.
	var warned []string
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var l struct{ Msg, Provider string }
		if json.Unmarshal([]byte(line), &l) == nil && strings.Contains(l.Msg, "client certificate expires soon") {
			warned = append(warned, l.Provider)
		}
	}
	if len(warned) != 1 || warned[0] != "mtls" {
		t.Fatalf("expiry warnings for %v, want only mtls", warned)
	}
	if d := metrics.got["mtls"]; d < 9 || d > 10 {
		t.Fatalf("ClientCertificateDaysLeft for mtls: %v", d)
	}
	if d := metrics.got["self"]; d < 360 {
		t.Fatalf("ClientCertificateDaysLeft for self: %v", d)
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Fatal("a private key reached the log")
	}
}
