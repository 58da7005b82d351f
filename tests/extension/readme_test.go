package extension

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/extension"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// TestREADMEPythonSampleBypassesProxies runs the README's Python consumer
// sample with HTTP_PROXY set: the request carrying the session token must
// go straight to the extension on loopback, never to the proxy.
func TestREADMEPythonSampleBypassesProxies(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		testenv.SkipOrFail(t, "python3 is needed for the README sample")
	}
	var sample string
	for _, b := range testenv.DocBlocks(t, "python", "X-Token-Vendor-Session-Token") {
		if strings.Contains(b, "def token(") { // docs/dpop.md's DPoP sample is run by tests/oidc
			sample = b
		}
	}
	if sample == "" {
		t.Fatal("no Python extension sample in the docs (README.md, docs/*.md)")
	}
	const session = "session-token-canary"
	ext := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(extension.Header) != session {
			w.WriteHeader(401)
			return
		}
		w.Write([]byte(`{"access_token":"from-the-extension"}`))
	}))
	defer ext.Close()
	var proxied atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		w.Write([]byte(`{"access_token":"from-the-proxy"}`))
	}))
	defer proxy.Close()
	u, _ := url.Parse(ext.URL)
	code := strings.Split(sample, "\ndef handler")[0]
	code = strings.ReplaceAll(code, "127.0.0.1:2790", u.Host) + "\nprint(token(\"kopokopo\"))\n"
	cmd := exec.Command("python3", "-c", code)
	cmd.Env = append(os.Environ(), "AWS_SESSION_TOKEN="+session, "HTTP_PROXY="+proxy.URL, "http_proxy="+proxy.URL, "NO_PROXY=", "no_proxy=")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "from-the-extension" || proxied.Load() != 0 {
		t.Fatalf("README sample: %v %s; %d requests through the proxy", err, out, proxied.Load())
	}
}
