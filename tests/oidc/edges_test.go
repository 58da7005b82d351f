package oidc

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/wire"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// testCA is trusted by this test binary and by the processes it starts
// (SSL_CERT_FILE), as a deployment trusts its providers' CAs.
var (
	testCA     *pki
	testCAFile string
)

func TestMain(m *testing.M) {
	dir, _ := os.MkdirTemp("", "oidc-ca-")
	testCA = newPKI(nil)
	testCAFile = filepath.Join(dir, "ca.pem")
	os.WriteFile(testCAFile, []byte(testCA.caPEM), 0o600)
	os.Setenv("SSL_CERT_FILE", testCAFile) // read once, at the first TLS handshake
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Both methods through every edge: the HTTP API handler and direct invoke
// (the Lambda handlers' code, in process, wired by app.New as in Lambda)
// and `tokenvendor serve` as its own process, against oidc-provider over
// HTTPS with client certificates. No key, certificate key or assertion
// reaches a log line or the listing.
func TestBothMethodsThroughEveryEdge(t *testing.T) {
	dir := t.TempDir()
	srvCert, srvKey, _ := testCA.issue(t, "127.0.0.1", true, time.Now().Add(24*time.Hour))
	cliCert, cliKey, _ := testCA.issue(t, "svc-mtls", false, time.Now().Add(90*24*time.Hour))
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwtKey := pemOf(ec)
	keyOnly := definition(&server{issuer: "https://127.0.0.1:1"}, "svc-jwt", func(d *provider.Definition) { d.PrivateKey = jwtKey })
	srv := startWith(t, []registration{
		{ClientID: "svc-jwt", JWKS: jwks(t, assertion.New(nil), keyOnly)},
		{ClientID: "svc-mtls", Auth: provider.AuthTLS, SubjectDN: "CN=svc-mtls"},
	}, &tlsFiles{Key: write(t, dir, "srv.key", srvKey), Cert: write(t, dir, "srv.crt", srvCert), CA: testCAFile})
	defsJSON := map[string]map[string]string{
		"okta-style":  {"token_url": srv.issuer + "/token", "client_id": "svc-jwt", "auth_method": "private_key_jwt", "private_key": jwtKey},
		"entra-style": {"token_url": srv.issuer + "/token", "client_id": "svc-mtls", "auth_method": "tls_client_auth", "client_certificate": cliCert, "client_key": cliKey},
	}
	raw, _ := json.Marshal(defsJSON)
	file := write(t, dir, "providers.json", string(raw))

	cfg := app.Defaults()
	cfg.ProvidersFile, cfg.MetricsNamespace, cfg.RefreshAhead = file, "off", false
	cfg.AllowUnverifiedCallers = true // identity is not the subject: direct invokes carry no proof
	var logs bytes.Buffer
	a, err := app.New(cfg, app.Clients{}, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(a.Handler)
	defer api.Close()
	invoke := lambda.NewHandler(lambdafn.Invoke(a.Gate, a.Proofs, a.Log, nil))
	serveLogs := &testenv.SyncBuffer{}
	serveURL := startServe(t, file, serveLogs)
	secrets := []string{jwtKey[40:100], cliKey[40:100], "PRIVATE KEY"}
	var bodies []string
	for _, p := range []string{"okta-style", "entra-style"} {
		for _, base := range []string{api.URL, serveURL} {
			body := get(t, base+"/v1/tokens/"+p+"?scope=read")
			var tok wire.TokenResponse
			if json.Unmarshal([]byte(body), &tok) != nil || tok.AccessToken == "" || tok.ExpiresIn <= 0 {
				t.Fatalf("%s via %s: %s", p, base, body)
			}
			bodies = append(bodies, body)
		}
		out, err := invoke.Invoke(context.Background(), []byte(fmt.Sprintf(`{"provider":%q,"scope":"read"}`, p)))
		var tok wire.TokenResponse
		if err != nil || json.Unmarshal(out, &tok) != nil || tok.AccessToken == "" {
			t.Fatalf("%s via direct invoke: %s %v", p, out, err)
		}
	}
	listing := get(t, api.URL+"/v1/providers") + get(t, serveURL+"/v1/providers")
	for _, s := range secrets {
		if strings.Contains(logs.String(), s) || strings.Contains(listing, s) || strings.Contains(strings.Join(bodies, ""), s) {
			t.Fatalf("key material leaked (%q) into logs or listings", s[:10])
		}
		if strings.Contains(serveLogs.String(), s) {
			t.Fatalf("key material leaked (%q) into tokenvendor serve's own log", s[:10])
		}
	}
	if !strings.Contains(serveLogs.String(), `"msg":"request"`) {
		t.Fatalf("tokenvendor serve logged nothing the test could read: %q", serveLogs.String())
	}
	if n := len(srv.assertions(t)); n == 0 || strings.Contains(logs.String(), "eyJ") || strings.Contains(serveLogs.String(), "eyJ") {
		t.Fatalf("assertions seen %d; an assertion in the log: %v", n, strings.Contains(logs.String(), "eyJ"))
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// startServe runs `tokenvendor serve` on the providers file, trusting the
// test CA, and returns its base URL.
// startServe runs `tokenvendor serve` as its own process; its log output
// (standard output and error) is collected in logs.
func startServe(t *testing.T, providers string, logs *testenv.SyncBuffer) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "tokenvendor")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(root, "cmd", "tokenvendor")).CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	port, _ := testenv.FreePort()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, "serve", "--addr", addr, "--providers", providers)
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+testCAFile)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			return "http://" + addr
		}
	}
	t.Fatal("serve did not start")
	return ""
}
