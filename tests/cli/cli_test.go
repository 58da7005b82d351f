// Package cli drives the tokenvendor binary as separate processes.
package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tokenvendor-cli-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "tokenvendor")
	root, err := testenv.RepoRoot()
	if err != nil {
		panic(err)
	}
	cmd := exec.Command("go", "build", "-race", "-o", binary, "./cmd/tokenvendor")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// upstream is a sandbox in the test process, shared by every vendor process,
// and a providers file pointing at it.
func upstream(t *testing.T) (*sandbox.Server, string) {
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	defs := sandbox.DemoProviders(sb, srv.URL)
	b, _ := json.Marshal(defs)
	path := filepath.Join(t.TempDir(), "providers.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return sb, path
}

type proc struct {
	cmd    *exec.Cmd
	base   string
	stderr *bytes.Buffer
	done   chan error
}

// serve starts `tokenvendor serve` on a free port and waits for it to listen.
func serve(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(binary, append([]string{"serve", "--addr", addr}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stdout, _ := cmd.StdoutPipe()
	p := &proc{cmd: cmd, base: "http://" + addr, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := bufio.NewScanner(stdout)
	ready := make(chan string, 1)
	go func() {
		for lines.Scan() {
			if strings.Contains(lines.Text(), "listening on") {
				ready <- lines.Text()
			}
		}
	}()
	select {
	case <-ready:
	case err := <-p.done:
		t.Fatalf("serve exited: %v\n%s", err, p.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not start\n%s", p.stderr)
	}
	return p
}

func (p *proc) call(t *testing.T, method, path, body string) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, p.base+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &m)
	return resp.StatusCode, resp.Header, m
}

func TestServeProcessEveryRoute(t *testing.T) {
	sb, file := upstream(t)
	p := serve(t, nil, "--providers", file)
	type check struct {
		method, path, body string
		status             int
		code               string
	}
	var tokens []string
	for _, c := range []check{
		{"GET", "/healthz", "", 200, ""},
		{"GET", "/v1/tokens/demo-k2?min_ttl=120", "", 200, ""},
		{"GET", "/v1/tokens/demo-mobi", "", 200, ""},
		{"GET", "/v1/tokens/demo-dot?scope=read%20write", "", 200, ""},
		{"POST", "/v1/tokens/demo-dot/refresh?scope=read%20write", "", 200, ""},
		{"POST", "/v1/tokens/demo-k2/rejected", `{"token_sha256":"` + strings.Repeat("ab", 32) + `"}`, 200, ""},
		{"POST", "/v1/tokens/demo-k2/revoke", "", 204, ""},
		{"GET", "/v1/providers", "", 200, ""},
		{"GET", "/v1/tokens/demo-dot?scope=read%20payments", "", 403, "scope_not_allowed"},
		{"GET", "/v1/tokens/demo-dot?scope=%22", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?min_ttl=x", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/missing", "", 404, "unknown_provider"},
		{"GET", "/nowhere", "", 404, "not_found"},
	} {
		st, h, m := p.call(t, c.method, c.path, c.body)
		if st != c.status || (c.code != "" && m["error"] != c.code) || h.Get("Cache-Control") != "no-store" {
			t.Fatalf("%s %s: %d %v", c.method, c.path, st, m)
		}
		if tok, ok := m["access_token"].(string); ok {
			tokens = append(tokens, tok)
		}
	}
	sb.SetFault(sandbox.Fault{Status: 401, ClientID: "demo-mobi-client"})
	if st, _, m := p.call(t, "POST", "/v1/tokens/demo-mobi/refresh", ""); st != 502 || m["upstream_error"] != "unauthorized_client" {
		t.Fatalf("upstream_rejected: %d %v", st, m)
	}
	sb.ClearFaults()
	sb.SetFault(sandbox.Fault{Status: 429, RetryAfter: 9, ClientID: "demo-k2-client"})
	if st, h, m := p.call(t, "GET", "/v1/tokens/demo-k2?scope=other", ""); st != 503 || m["error"] != "upstream_unavailable" || h.Get("Retry-After") == "" {
		t.Fatalf("upstream_unavailable: %d %v", st, m)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("unclean shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no shutdown on SIGTERM")
	}
	logs := p.stderr.String()
	if !strings.Contains(logs, `"path":"/v1/tokens/demo-k2"`) {
		t.Fatalf("no per-request log lines:\n%s", logs)
	}
	for _, tok := range tokens {
		if strings.Contains(logs, tok) {
			t.Fatal("a token reached the logs")
		}
	}
	for _, s := range []string{"demo-k2-secret", "demo-mobi-secret", "demo-dot-secret"} {
		if strings.Contains(logs, s) {
			t.Fatal("a secret reached the logs")
		}
	}
}

// TestTwoServeProcessesShareOneTable: two vendors on one DynamoDB Local
// table behave as a fleet: one upstream request for a shared key.
func TestTwoServeProcessesShareOneTable(t *testing.T) {
	ep := testenv.DynamoDB(t)
	sb, file := upstream(t)
	table := "cli-" + testenv.RandomSuffix()
	env := []string{"AWS_ENDPOINT_URL_DYNAMODB=" + ep, "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test", "AWS_REGION=us-east-1", "AWS_EC2_METADATA_DISABLED=true"}
	a := serve(t, env, "--providers", file, "--table", table, "--create-table")
	b := serve(t, env, "--providers", file, "--table", table, "--create-table")
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]int{}
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func(p *proc) {
			defer wg.Done()
			st, _, m := p.call(t, "GET", "/v1/tokens/demo-dot?scope=admin", "")
			if st != 200 {
				t.Errorf("status %d %v", st, m)
				return
			}
			mu.Lock()
			seen[m["access_token"].(string)]++
			mu.Unlock()
		}([]*proc{a, b}[i%2])
	}
	wg.Wait()
	if n := sb.Requests("demo-dot-client"); n != 1 || len(seen) != 1 {
		t.Fatalf("two processes made %d upstream requests, vended %d distinct tokens", n, len(seen))
	}
}

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func TestCLIBadInputExitsTwoWithOneLine(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"k2":{"token_url":"http://public.example.com/t","client_id":"a","client_secret":"CANARY-S"}}`), 0o600)
	notJSON := filepath.Join(dir, "nj.json")
	os.WriteFile(notJSON, []byte(`{"k2": nope`), 0o600)
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"serve", "--bogus"},
		{"serve", "extra-arg"},
		{"serve", "--providers", filepath.Join(dir, "missing.json")},
		{"serve", "--providers", bad},
		{"token", "demo-k2", "--providers", notJSON},
		{"token"},
		{"token", "a", "b"},
		{"token", "demo-k2", "--min-ttl", "-7"},
		{"token", "demo-k2", "--min-ttl", "x"},
		{"sandbox", "--addr"},
	} {
		code, _, stderr := run(t, args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != 2 || (len(args) > 0 && len(lines) != 1) || strings.Contains(stderr, "CANARY-S") {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

func TestTokenCommand(t *testing.T) {
	code, out, stderr := run(t, "token", "demo-dot", "--scope", "read write", "--min-ttl", "120")
	var m map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &m) != nil || m["scope"] != "read write" || m["access_token"] == "" {
		t.Fatalf("exit %d out %q err %q", code, out, stderr)
	}
	code, _, stderr = run(t, "token", "missing")
	if code != 1 || !strings.Contains(stderr, "unknown_provider") {
		t.Fatalf("unknown provider: %d %q", code, stderr)
	}
}

func TestSandboxCommand(t *testing.T) {
	port, _ := testenv.FreePort()
	cmd := exec.Command(binary, "sandbox", "--addr", fmt.Sprintf("127.0.0.1:%d", port))
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGINT); cmd.Wait() }()
	var defs map[string]*provider.Definition
	if err := json.NewDecoder(stdout).Decode(&defs); err != nil {
		t.Fatal(err)
	}
	k2 := defs["demo-k2"]
	if k2 == nil || !strings.HasPrefix(k2.TokenURL, fmt.Sprintf("http://127.0.0.1:%d/", port)) {
		t.Fatalf("demo providers: %+v", defs)
	}
	resp, err := http.Post(k2.TokenURL, "application/x-www-form-urlencoded", strings.NewReader("grant_type=client_credentials&client_id="+k2.ClientID+"&client_secret="+k2.ClientSecret))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("sandbox token: %v %v", err, resp)
	}
	resp.Body.Close()
}

// TestConsumerClientAgainstServe: the Go consumer client against a running
// `tokenvendor serve`: cached tokens, and a resource server's 401 turned into
// a rejected-token report and one retry with the replacement.
func TestConsumerClientAgainstServe(t *testing.T) {
	sb, file := upstream(t)
	p := serve(t, nil, "--providers", file)
	c := client.New(client.NewHTTPFetcher(p.base, nil, ""))
	ctx := context.Background()
	tok, err := c.Token(ctx, "demo-dot", "read write")
	if err != nil || !sb.Valid(tok.AccessToken) {
		t.Fatalf("%v %v", tok, err)
	}
	if again, _ := c.Token(ctx, "demo-dot", "read write"); again != tok {
		t.Fatal("not cached in-process")
	}
	defs, _ := os.ReadFile(file)
	var m map[string]map[string]any
	json.Unmarshal(defs, &m)
	resource := strings.TrimSuffix(m["demo-dot"]["token_url"].(string), sandbox.DOTTokenPath) + sandbox.ResourcePath
	hc := &http.Client{Transport: c.Transport(nil, "demo-dot", "read write")}
	sb.RevokeToken(tok.AccessToken) // revoked behind the vendor's back
	resp, err := hc.Get(resource)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after a 401 the transport should have retried with a new token: %v %v", err, resp)
	}
	resp.Body.Close()
	if n := sb.Requests("demo-dot-client"); n != 2 {
		t.Fatalf("upstream requests %d, want 2", n)
	}
}

// jwks prints the public JWK Set of a private_key_jwt provider, never the
// private key; for other providers it says why not.
func TestJWKSCommand(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	pemKey := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	defs, _ := json.Marshal(map[string]any{
		"okta":   map[string]any{"token_url": "https://idp.example/oauth2/v1/token", "client_id": "0oa1", "auth_method": "private_key_jwt", "private_key": pemKey, "key_id": "k-2026"},
		"secret": map[string]any{"token_url": "https://idp.example/t", "client_id": "c", "client_secret": "CANARY-S"},
	})
	file := filepath.Join(t.TempDir(), "providers.json")
	os.WriteFile(file, defs, 0o600)
	code, out, stderr := run(t, "jwks", "okta", "--providers", file)
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &set) != nil || len(set.Keys) != 1 {
		t.Fatalf("exit %d out %q err %q", code, out, stderr)
	}
	k := set.Keys[0]
	if k["kty"] != "EC" || k["crv"] != "P-256" || k["kid"] != "k-2026" || k["alg"] != "ES256" || k["use"] != "sig" || k["d"] != nil {
		t.Fatalf("JWK %v", k)
	}
	if strings.Contains(out+stderr, "PRIVATE KEY") || strings.Contains(out+stderr, pemKey[40:80]) {
		t.Fatal("the private key was printed")
	}
	if code, _, stderr := run(t, "jwks", "secret", "--providers", file); code != 2 || !strings.Contains(stderr, "not private_key_jwt") || strings.Contains(stderr, "CANARY-S") {
		t.Fatalf("secret provider: %d %q", code, stderr)
	}
}

// TestTokenCommandAudited: the CLI goes through the gate as the cli
// operator path: it may take a restricted provider's token (whoever runs
// it reads the secrets directly), and leaves one audit record on stderr
// naming the path, the provider and the token's digest, never the token.
func TestTokenCommandAudited(t *testing.T) {
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	defs := sandbox.DemoProviders(sb, srv.URL)
	defs["demo-k2"].AllowedCallers = []string{"arn:aws:iam::123456789012:role/payments"}
	b, _ := json.Marshal(defs)
	path := filepath.Join(t.TempDir(), "providers.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, "token", "demo-k2", "--providers", path)
	var tok map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &tok) != nil || tok["access_token"] == "" {
		t.Fatalf("exit %d out %q err %q", code, out, stderr)
	}
	var audits []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "audit" {
			audits = append(audits, rec)
		}
	}
	sum := sha256.Sum256([]byte(tok["access_token"].(string)))
	if len(audits) != 1 || audits[0]["path"] != "cli" || audits[0]["provider"] != "demo-k2" || audits[0]["outcome"] != "granted" ||
		audits[0]["token_sha256_prefix"] != hex.EncodeToString(sum[:6]) {
		t.Fatalf("audit records %v, want one for the cli path with the token's digest", audits)
	}
	if strings.Contains(stderr, tok["access_token"].(string)) {
		t.Fatal("the token reached stderr")
	}
}
