// Package oidc proves private_key_jwt against a real, certified
// implementation: panva/oidc-provider (npm, pinned in package.json,
// installed by the test with npm ci), started here like the emulators. Keys
// are PEM keys and asymmetric KMS keys in moto.
package oidc

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

var npmOnce sync.Once

// server is a running oidc-provider.
type server struct {
	issuer string
}

// seen is what the server decoded from one client assertion.
type seen struct {
	Header map[string]any `json:"header"`
	Claims map[string]any `json:"claims"`
}

// registration is one client at the server.
type registration struct {
	ClientID  string          `json:"client_id"`
	Auth      string          `json:"auth,omitempty"` // private_key_jwt when empty
	JWKS      json.RawMessage `json:"jwks,omitempty"`
	Secret    string          `json:"secret,omitempty"` // client_secret_jwt
	JWKSURI   string          `json:"jwks_uri,omitempty"`
	SubjectDN string          `json:"subject_dn,omitempty"`
	DPoPBound bool            `json:"dpop_bound,omitempty"` // dpop_bound_access_tokens
}

// tlsFiles serve HTTPS and verify client certificates against CA.
type tlsFiles struct{ Key, Cert, CA string }

// start runs oidc-provider with one private_key_jwt client per entry
// (client id -> JWK Set).
func start(t *testing.T, clients map[string]json.RawMessage) *server {
	var regs []registration
	for id, jwks := range clients {
		regs = append(regs, registration{ClientID: id, JWKS: jwks})
	}
	return startWith(t, regs, nil)
}

func startWith(t *testing.T, regs []registration, tf *tlsFiles) *server {
	t.Helper()
	return startEnv(t, regs, tf)
}

// startEnv is startWith with further environment for server.mjs.
func startEnv(t *testing.T, regs []registration, tf *tlsFiles, env ...string) *server {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		testenv.SkipOrFail(t, "node is needed for oidc-provider")
	}
	var npmErr error
	npmOnce.Do(func() {
		if _, err := os.Stat("node_modules/oidc-provider"); err == nil {
			return
		}
		out, err := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error").CombinedOutput()
		if err != nil {
			npmErr = fmt.Errorf("npm ci: %v\n%s", err, out)
		}
	})
	if npmErr != nil {
		t.Fatal(npmErr)
	}
	cfg, _ := json.Marshal(regs)
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", "server.mjs")
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), "CLIENTS="+string(cfg), "NODE_NO_WARNINGS=1")
	cmd.Env = append(cmd.Env, env...)
	scheme := "http"
	if tf != nil {
		cmd.Env = append(cmd.Env, "TLS_KEY="+tf.Key, "TLS_CERT="+tf.Cert, "TLS_CA="+tf.CA)
		scheme = "https"
	}
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "listening ") {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("oidc-provider did not start")
	}
	return &server{issuer: fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)}
}

func (s *server) assertions(t *testing.T) []seen {
	t.Helper()
	resp, err := http.Get(s.issuer + "/__assertions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []seen
	json.NewDecoder(resp.Body).Decode(&out)
	return out
}

func pemOf(k crypto.Signer) string {
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func definition(s *server, id string, set func(*provider.Definition)) *provider.Definition {
	d := &provider.Definition{Name: id, TokenURL: s.issuer + "/token", ClientID: id, AuthMethod: provider.AuthPrivateKeyJWT}
	set(d)
	if err := d.Validate(); err != nil {
		panic(err)
	}
	return d
}

func jwks(t *testing.T, keys *assertion.Keys, defs ...*provider.Definition) json.RawMessage {
	t.Helper()
	var all []json.RawMessage
	for _, d := range defs {
		raw, err := keys.JWKS(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		var set struct{ Keys []json.RawMessage }
		json.Unmarshal(raw, &set)
		all = append(all, set.Keys...)
	}
	b, _ := json.Marshal(map[string]any{"keys": all})
	return b
}

func kmsClient(t *testing.T) *kms.Client {
	return kms.NewFromConfig(testenv.Config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(testenv.Moto(t)) })
}

func kmsKey(t *testing.T, api *kms.Client, spec kmstypes.KeySpec) string {
	out, err := api.CreateKey(context.Background(), &kms.CreateKeyInput{KeySpec: spec, KeyUsage: kmstypes.KeyUsageTypeSignVerify})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.KeyMetadata.KeyId)
}

func vendor(defs map[string]*provider.Definition, as upstream.Assertions) (*vend.Vendor, *vendtest.Providers) {
	provs := vendtest.NewProviders(defs)
	up := &upstream.Client{Assertions: as, MaxAttempts: 1}
	return vend.New(provs, up, store.NewMemory(nil), vend.Options{DisableRefreshAhead: true, L1MaxAge: -1}), provs
}

// Each kind of key fetches a token from oidc-provider, which checks the
// assertion (signature against the registered JWKS, iss, sub, aud, exp,
// jti); the token is then cached.
func TestPrivateKeyJWTFetchesAndCaches(t *testing.T) {
	api := kmsClient(t)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keys := assertion.New(api)
	placeholder := &server{issuer: "http://127.0.0.1:1"}
	setups := map[string]func(*provider.Definition){
		"pem-rsa":   func(d *provider.Definition) { d.PrivateKey = pemOf(rsaKey) },
		"pem-ps256": func(d *provider.Definition) { d.PrivateKey, d.SigningAlg = pemOf(rsaKey), "PS256" },
		"pem-ec":    func(d *provider.Definition) { d.PrivateKey = pemOf(ecKey) },
		"kms-rsa":   func(d *provider.Definition) { d.KMSKeyID = kmsKey(t, api, kmstypes.KeySpecRsa2048) },
		"kms-ec":    func(d *provider.Definition) { d.KMSKeyID = kmsKey(t, api, kmstypes.KeySpecEccNistP256) },
	}
	clients := map[string]json.RawMessage{}
	kinds := map[string]*provider.Definition{}
	for id, set := range setups {
		d := definition(placeholder, id, set)
		kinds[id] = d
		clients[id] = jwks(t, keys, d)
	}
	srv := start(t, clients)
	defs := map[string]*provider.Definition{}
	for id, d := range kinds {
		cp := *d
		cp.TokenURL = srv.issuer + "/token"
		defs[id] = &cp
	}
	v, _ := vendor(defs, keys)
	for id := range defs {
		t.Run(id, func(t *testing.T) {
			first, err := v.Token(context.Background(), vend.Request{Provider: id, Scope: "read", MinTTL: -1})
			if err != nil || first.Source != vend.FromUpstream || first.AccessToken == "" {
				t.Fatalf("fetch: %v %v", first.Source, err)
			}
			again, err := v.Token(context.Background(), vend.Request{Provider: id, Scope: "read", MinTTL: -1})
			if err != nil || again.Source != vend.FromL2 || again.AccessToken != first.AccessToken {
				t.Fatalf("not cached: %v %v", again.Source, err)
			}
		})
	}
	// The server's view of every assertion.
	got := srv.assertions(t)
	if len(got) != len(defs) {
		t.Fatalf("server saw %d assertions for %d fetches", len(got), len(defs))
	}
	jtis := map[any]bool{}
	for _, a := range got {
		c := a.Claims
		id, _ := c["iss"].(string)
		if defs[id] == nil || c["sub"] != id || c["aud"] != srv.issuer+"/token" || a.Header["kid"] == "" || jtis[c["jti"]] {
			t.Fatalf("assertion as the server decoded it: %+v", a)
		}
		jtis[c["jti"]] = true
		if exp, iat := c["exp"].(float64), c["iat"].(float64); exp-iat <= 0 || exp-iat > 300 {
			t.Fatalf("assertion lifetime %v s", exp-iat)
		}
	}
}

// fixed hands out the same assertion every time, as a replaying client would.
type fixed struct{ a string }

func (f fixed) Assertion(context.Context, *provider.Definition, string) (string, error) {
	return f.a, nil
}

func TestReplayWrongKeyAndRotation(t *testing.T) {
	keyA, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keyB, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keys := assertion.New(nil)
	placeholder := &server{issuer: "http://127.0.0.1:1"}
	withA := definition(placeholder, "svc", func(d *provider.Definition) { d.PrivateKey = pemOf(keyA) })
	withB := definition(placeholder, "svc", func(d *provider.Definition) { d.PrivateKey = pemOf(keyB) })
	srv := start(t, map[string]json.RawMessage{"svc": jwks(t, keys, withA, withB)}) // A and B registered: a rotation in progress
	for _, d := range []*provider.Definition{withA, withB} {
		d.TokenURL = srv.issuer + "/token"
		if err := d.Validate(); err != nil { // definitions are immutable once validated: validate the final one
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	req := vend.Request{Provider: "svc", MinTTL: -1}

	// Replay: the same assertion (same jti) twice; the server refuses the second.
	one, err := keys.Assertion(ctx, withA, withA.TokenURL)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := vendor(map[string]*provider.Definition{"svc": withA}, fixed{one})
	if _, err := v.Token(ctx, req); err != nil {
		t.Fatalf("first use of the assertion: %v", err)
	}
	_, err = v.Refresh(ctx, req)
	if re, ok := upstream.AsRetrieveError(err); !ok || re.Kind != upstream.Permanent || re.Code != "invalid_client" {
		t.Fatalf("replayed assertion: want upstream_rejected (invalid_client), got %v", err)
	}

	// A key the client never registered is refused.
	wrong := *withA
	wrong.PrivateKey = pemOf(stranger)
	v, _ = vendor(map[string]*provider.Definition{"svc": &wrong}, keys)
	if _, err := v.Token(ctx, req); err == nil {
		t.Fatal("a token was issued for an unregistered key")
	} else if re, ok := upstream.AsRetrieveError(err); !ok || re.Kind != upstream.Permanent {
		t.Fatalf("wrong key: want upstream_rejected, got %v", err)
	}

	// Rotation: callers keep the cached token while the registration moves
	// to key B (new kid); the next fetch signs with B and is accepted.
	v, provs := vendor(map[string]*provider.Definition{"svc": withA}, keys)
	tokA, err := v.Token(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	provs.Set(withB)
	if cached, err := v.Token(ctx, req); err != nil || cached.AccessToken != tokA.AccessToken {
		t.Fatalf("during the rotation: %v", err)
	}
	tokB, err := v.Refresh(ctx, req)
	if err != nil || tokB.AccessToken == tokA.AccessToken {
		t.Fatalf("after the rotation: %v", err)
	}
	got := srv.assertions(t)
	last := got[len(got)-1]
	if kidB := kid(t, keys, withB); last.Header["kid"] != kidB {
		t.Fatalf("the fetch after the rotation signed with kid %v, want %s", last.Header["kid"], kidB)
	}
}

func kid(t *testing.T, keys *assertion.Keys, d *provider.Definition) string {
	raw, _ := keys.JWKS(context.Background(), d)
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
		}
	}
	json.Unmarshal(raw, &set)
	return set.Keys[0].Kid
}

// client_secret_jwt (HS256 over the client secret, RFC 7523 with the OIDC
// Core claims) against oidc-provider: the token is issued and cached, the
// assertion carries HS256 and no kid, and the secret never travels; a
// wrong secret is refused as upstream_rejected.
func TestClientSecretJWT(t *testing.T) {
	secret := "hs256-client-secret-" + strings.Repeat("k", 24)
	srv := startWith(t, []registration{{ClientID: "svc-hs", Auth: provider.AuthClientSecretJWT, Secret: secret}}, nil)
	d := definition(srv, "svc-hs", func(d *provider.Definition) {
		d.AuthMethod, d.ClientSecret = provider.AuthClientSecretJWT, secret
	})
	ctx := context.Background()
	v, _ := vendor(map[string]*provider.Definition{"svc-hs": d}, assertion.New(nil))
	tok, err := v.Token(ctx, vend.Request{Provider: "svc-hs", Scope: "read", MinTTL: -1})
	if err != nil || tok.AccessToken == "" || tok.Source != vend.FromUpstream {
		t.Fatalf("client_secret_jwt: %+v %v", tok, err)
	}
	if again, err := v.Token(ctx, vend.Request{Provider: "svc-hs", Scope: "read", MinTTL: -1}); err != nil || again.AccessToken != tok.AccessToken {
		t.Fatalf("not cached: %v", err)
	}
	got := srv.assertions(t)
	if len(got) != 1 || got[0].Header["alg"] != "HS256" || got[0].Header["kid"] != nil || got[0].Claims["iss"] != "svc-hs" || got[0].Claims["sub"] != "svc-hs" {
		t.Fatalf("assertions seen: %+v", got)
	}
	wrong := *d
	wrong.ClientSecret = strings.Repeat("w", 44)
	if err := wrong.Validate(); err != nil {
		t.Fatal(err)
	}
	v, _ = vendor(map[string]*provider.Definition{"svc-hs": &wrong}, assertion.New(nil))
	_, err = v.Token(ctx, vend.Request{Provider: "svc-hs", Scope: "read", MinTTL: -1})
	if re, ok := upstream.AsRetrieveError(err); !ok || re.Kind != upstream.Permanent || re.Code != "invalid_client" {
		t.Fatalf("a wrong secret: want invalid_client, got %v", err)
	}
}

// An assertion with the signing key's certificate thumbprints in its header
// (x5t#S256, x5t) is accepted by oidc-provider, which sees the headers the
// certificate gives.
func TestCertificateThumbprintAccepted(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "svc-cert"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keys := assertion.New(nil)
	placeholder := &server{issuer: "http://127.0.0.1:1"}
	withCert := definition(placeholder, "svc-cert", func(d *provider.Definition) {
		d.PrivateKey, d.SigningCertificate, d.AssertionX5T = pemOf(k), certPEM, true
	})
	srv := start(t, map[string]json.RawMessage{"svc-cert": jwks(t, keys, withCert)})
	withCert.TokenURL = srv.issuer + "/token"
	if err := withCert.Validate(); err != nil {
		t.Fatal(err)
	}
	v, _ := vendor(map[string]*provider.Definition{"svc-cert": withCert}, keys)
	if _, err := v.Token(context.Background(), vend.Request{Provider: "svc-cert", Scope: "read", MinTTL: -1}); err != nil {
		t.Fatal(err)
	}
	got := srv.assertions(t)
	s256 := sha256.Sum256(der)
	if len(got) != 1 || got[0].Header["x5t#S256"] != base64.RawURLEncoding.EncodeToString(s256[:]) || got[0].Header["x5t"] == nil {
		t.Fatalf("headers seen: %+v", got)
	}
}

// The JWKS route as the client's jwks_uri: oidc-provider fetches the
// vendor's public keys from it (no IAM), and a rotation — the next key
// published first (publish_keys), then signing with it — needs no
// re-registration and fails no vend. The route serves no private key.
func TestJWKSRouteAsJWKSURIAndRotation(t *testing.T) {
	keyA, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keyB, _ := rsa.GenerateKey(rand.Reader, 2048)
	pubPEM := func(k crypto.Signer) string {
		der, _ := x509.MarshalPKIXPublicKey(k.Public())
		return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	}
	keys := assertion.New(nil)
	provs := vendtest.NewProviders(map[string]*provider.Definition{})
	var fetches atomic.Int32
	h := httpapi.New(nil, listing{provs}, nil, nil).WithJWKS(keys)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		h.ServeHTTP(w, r)
	}))
	defer api.Close()
	srv := startWith(t, []registration{{ClientID: "svc-uri", JWKSURI: api.URL + "/v1/providers/svc-uri/jwks.json"}}, nil)
	withA := definition(srv, "svc-uri", func(d *provider.Definition) { d.PrivateKey, d.PublishKeys = pemOf(keyA), []string{pubPEM(keyB)} })
	provs.Set(withA)
	ctx := context.Background()
	v := vend.New(provs, &upstream.Client{Assertions: keys, MaxAttempts: 1}, store.NewMemory(nil), vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	req := vend.Request{Provider: "svc-uri", Scope: "read", MinTTL: -1}
	tokA, err := v.Token(ctx, req)
	if err != nil || fetches.Load() == 0 {
		t.Fatalf("with key A through jwks_uri: %v (%d JWKS fetches)", err, fetches.Load())
	}
	resp, err := http.Get(api.URL + "/v1/providers/svc-uri/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "max-age=") || strings.Contains(cc, "no-store") || strings.Contains(string(body), `"d"`) || strings.Count(string(body), `"kid"`) != 2 {
		t.Fatalf("JWKS route: %s %s", cc, body)
	}
	// Rotation: sign with B (already published), keep A published.
	withB := definition(srv, "svc-uri", func(d *provider.Definition) { d.PrivateKey, d.PublishKeys = pemOf(keyB), []string{pubPEM(keyA)} })
	provs.Set(withB)
	if cached, err := v.Token(ctx, req); err != nil || cached.AccessToken != tokA.AccessToken {
		t.Fatalf("during the rotation: %v", err)
	}
	tokB, err := v.Refresh(ctx, req)
	if err != nil || tokB.AccessToken == tokA.AccessToken {
		t.Fatalf("signing with the new key: %v", err)
	}
	got := srv.assertions(t)
	if last := got[len(got)-1]; last.Header["alg"] != "RS256" {
		t.Fatalf("the fetch after the rotation was not signed by key B: %+v", last.Header)
	}
	// Another provider's material is not served, nor a provider without keys.
	if r, _ := http.Get(api.URL + "/v1/providers/nobody/jwks.json"); r.StatusCode != 404 {
		t.Fatalf("unknown provider: %d", r.StatusCode)
	}
}

// listing lets a vendtest.Providers serve the HTTP API (it lists nothing).
type listing struct{ *vendtest.Providers }

func (listing) Names(context.Context) ([]string, error) { return nil, nil }

// RFC 8707 resource indicators against oidc-provider: each resource is its
// own cached token, issued for that resource (the JWT's aud), through the
// vend core as every edge reaches it; a resource not allowed never reaches
// the server.
func TestResourceIndicators(t *testing.T) {
	secret := "resource-client-secret-" + strings.Repeat("r", 20)
	srv := startWith(t, []registration{{ClientID: "svc-res", Auth: provider.AuthClientSecretJWT, Secret: secret}}, nil)
	d := definition(srv, "svc-res", func(d *provider.Definition) {
		d.AuthMethod, d.ClientSecret = provider.AuthClientSecretJWT, secret
		d.AllowedResources = []string{"https://api.example/payments", "https://api.example/payouts"}
	})
	v, _ := vendor(map[string]*provider.Definition{"svc-res": d}, assertion.New(nil))
	ctx := context.Background()
	aud := func(tok string) any {
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			t.Fatalf("not a JWT access token: %d parts", len(parts))
		}
		raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var claims map[string]any
		json.Unmarshal(raw, &claims)
		return claims["aud"]
	}
	pay, err := v.Token(ctx, vend.Request{Provider: "svc-res", Scope: "read", Resource: "https://api.example/payments", MinTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	out, err := v.Token(ctx, vend.Request{Provider: "svc-res", Scope: "read", Resource: "https://api.example/payouts", MinTTL: -1})
	if err != nil || out.AccessToken == pay.AccessToken {
		t.Fatalf("second resource: %v", err)
	}
	if aud(pay.AccessToken) != "https://api.example/payments" || aud(out.AccessToken) != "https://api.example/payouts" {
		t.Fatalf("aud %v and %v", aud(pay.AccessToken), aud(out.AccessToken))
	}
	if again, _ := v.Token(ctx, vend.Request{Provider: "svc-res", Scope: "read", Resource: "https://api.example/payments", MinTTL: -1}); again.AccessToken != pay.AccessToken {
		t.Fatal("not cached per resource")
	}
	before := len(srv.assertions(t))
	if _, err := v.Token(ctx, vend.Request{Provider: "svc-res", Resource: "https://evil.example/", MinTTL: -1}); !errors.Is(err, provider.ErrTargetNotAllowed) || len(srv.assertions(t)) != before {
		t.Fatalf("a resource not allowed: %v", err)
	}
}
