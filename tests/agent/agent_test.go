// Package agent runs the token-vendor agent as AWS runs it in a container
// or on an instance: its binary as a separate process, credentials from a
// container-credentials endpoint (ECS's AWS_CONTAINER_CREDENTIALS_FULL_URI
// with its authorization token, EKS Pod Identity's token file) handing out
// a role assumed in moto with signatures enforced, and the vend function's
// real code path (gate, identity verification by moto's STS, DynamoDB
// Local) behind a Lambda Invoke endpoint.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/token-vendor/token-vendor/pkg/agent"
	"github.com/token-vendor/token-vendor/pkg/extension"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/lambdart"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// vendFunction is the vend function's name; the vendor id is its ARN.
const (
	vendFunction = "tv-agent-VendFunction-AbC123"
	vendARN      = "arn:aws:lambda:us-east-1:123456789012:function:" + vendFunction
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// agentBinary builds the agent the way `make agent` does, for the host.
func agentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "tokenvendor-agent-")
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("make", "-s", "agent-binary", "AGENT_ARCH="+runtime.GOARCH, "AGENT_OUT="+dir)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("make agent-binary: %v\n%s", err, out)
			return
		}
		binPath = filepath.Join(dir, "linux-"+runtime.GOARCH, "tokenvendor-agent")
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(filepath.Dir(binPath)))
	}
	os.Exit(code)
}

// credentialsEndpoint is the container credentials endpoint ECS's agent
// and EKS Pod Identity's agent serve: GET with the Authorization token,
// the role's temporary credentials back.
type credentialsEndpoint struct {
	URL, Auth string
	served    atomic.Int64
	refused   atomic.Int64
}

func startCredentials(t *testing.T, c aws.Credentials) *credentialsEndpoint {
	e := &credentialsEndpoint{Auth: "ecs-auth-" + testenv.RandomSuffix()}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/credentials/task" || r.Header.Get("Authorization") != e.Auth {
			e.refused.Add(1)
			http.Error(w, `{"code":"AccessDenied"}`, http.StatusUnauthorized)
			return
		}
		e.served.Add(1)
		json.NewEncoder(w).Encode(map[string]string{"AccessKeyId": c.AccessKeyID, "SecretAccessKey": c.SecretAccessKey,
			"Token": c.SessionToken, "Expiration": c.Expires.UTC().Format(time.RFC3339), "RoleArn": "task-role"})
	}))
	t.Cleanup(srv.Close)
	e.URL = srv.URL + "/v2/credentials/task"
	return e
}

// world is a vendor behind the Invoke API and roles in moto.
type world struct {
	moto    *testenv.AuthMoto
	up      *vendtest.Upstream
	invoke  *lambdart.InvokeAPI
	payArn  string
	allowed aws.Credentials // the listed task role's session
	other   aws.Credentials // a role not listed
	audit   *testenv.SyncBuffer
}

func newWorld(t *testing.T, clients ...sandbox.Client) *world {
	t.Helper()
	ep := testenv.DynamoDB(t)
	m := testenv.StartAuthMoto(t)
	_, allowed := m.Role(t, "/tasks/", "payments-task", "payments-task")
	_, other := m.Role(t, "/", "reports-task", "reports-task")
	up := vendtest.NewUpstream(t)
	pay := *up.Defs["demo-k2"]
	pay.Name, pay.AllowedCallers = "payments", []string{"arn:aws:iam::123456789012:role/tasks/payments-task"}
	if err := pay.Validate(); err != nil {
		t.Fatal(err)
	}
	up.Defs["payments"] = &pay
	for _, c := range clients {
		up.Server.AddClient(c)
		def := *up.Defs["demo-k2"]
		def.Name, def.ClientID, def.ClientSecret = c.ID, c.ID, c.Secret
		up.Defs[c.ID] = &def
	}
	st := dynamostore.New(testenv.DynamoDBClient(ep), testenv.NewTable(t, ep))
	defs := registry.NewStatic(up.Defs)
	core := vend.New(defs, vendtest.Client(nil), st, vend.Options{DisableRefreshAhead: true})
	audit := &testenv.SyncBuffer{}
	h := lambda.NewHandler(lambdafn.Invoke(gate.New(core, defs, slog.New(slog.NewJSONHandler(audit, nil)), nil),
		&identity.Verifier{Endpoint: m.Endpoint, VendorID: vendARN}, slog.New(slog.DiscardHandler), nil))
	inv := lambdart.StartInvokeAPI(h)
	t.Cleanup(inv.Close)
	return &world{moto: m, up: up, invoke: inv, payArn: pay.ClientID, allowed: allowed, other: other, audit: audit}
}

// proc is a running agent.
type proc struct {
	Addr, Token, TokenFile string
	Env                    []string
	Creds                  *credentialsEndpoint
	cmd                    *exec.Cmd
	out                    *testenv.SyncBuffer
	exited                 chan struct{}
	err                    error

	mu     sync.Mutex
	served []string
}

func (p *proc) servedTokens() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.served...)
}

// startAgent runs the agent binary with c as its container credentials,
// in an environment holding nothing else of AWS's: no keys, no config
// files, no instance metadata. It returns once the agent is healthy.
func (w *world) startAgent(t *testing.T, c aws.Credentials, tokenFromFile bool, args ...string) *proc {
	t.Helper()
	bin := agentBinary(t)
	creds := startCredentials(t, c)
	dir := t.TempDir()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{Addr: fmt.Sprintf("127.0.0.1:%d", port), TokenFile: filepath.Join(dir, "agent-token"), out: &testenv.SyncBuffer{}, exited: make(chan struct{})}
	p.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"AWS_CONFIG_FILE=" + filepath.Join(dir, "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(dir, "none"), "AWS_EC2_METADATA_DISABLED=true",
		"AWS_REGION=us-east-1", "AWS_ENDPOINT_URL_STS=" + w.moto.Endpoint, "AWS_ENDPOINT_URL_LAMBDA=" + w.invoke.URL,
		"AWS_CONTAINER_CREDENTIALS_FULL_URI=" + creds.URL,
		"TOKEN_VENDOR_FUNCTION=" + vendARN,
		"TOKEN_VENDOR_AGENT_TOKEN_FILE=" + p.TokenFile, "TOKEN_VENDOR_AGENT_ADDR=" + p.Addr}
	if tokenFromFile {
		// EKS Pod Identity: the authorization token in a projected file.
		f := filepath.Join(dir, "eks-pod-identity-token")
		if err := os.WriteFile(f, []byte(creds.Auth), 0o600); err != nil {
			t.Fatal(err)
		}
		p.Env = append(p.Env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE="+f)
	} else {
		p.Env = append(p.Env, "AWS_CONTAINER_AUTHORIZATION_TOKEN="+creds.Auth) // ECS
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = p.Env, p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		// Nothing secret in the agent's output: not the agent token, the
		// role's keys, nor any token it served.
		out := p.out.String()
		for _, s := range []string{p.Token, c.SecretAccessKey, c.SessionToken, creds.Auth} {
			if s != "" && strings.Contains(out, s) {
				t.Errorf("the agent's output holds a secret:\n%s", out)
			}
		}
		for _, tok := range p.servedTokens() {
			if strings.Contains(out, tok) {
				t.Errorf("the agent's output holds a token it served:\n%s", out)
			}
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for agent.Healthy(context.Background(), p.Addr) != nil {
		select {
		case <-p.exited:
			t.Fatalf("the agent exited: %v\n%s", p.err, p.out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent is not healthy after 20 s:\n%s", p.out.String())
		}
	}
	b, err := os.ReadFile(p.TokenFile)
	if err != nil {
		t.Fatalf("the agent did not create its token file: %v", err)
	}
	p.Token = strings.TrimSpace(string(b))
	p.Creds = creds
	return p
}

type answer struct {
	Status      int    `json:"-"`
	Error       string `json:"error"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
}

func (p *proc) get(t *testing.T, path string, header map[string]string) answer {
	t.Helper()
	a, err := p.try(path, header)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// try is get for goroutines other than the test's.
func (p *proc) try(path string, header map[string]string) (answer, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+p.Addr+path, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		return answer{}, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	a := answer{Status: resp.StatusCode}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("GET %s: %d %q is not JSON", path, resp.StatusCode, b)
	}
	if a.AccessToken != "" {
		p.mu.Lock()
		p.served = append(p.served, a.AccessToken)
		p.mu.Unlock()
	}
	return a, nil
}

func (p *proc) auth() map[string]string { return map[string]string{agent.Header: p.Token} }

// TestAgentServesTheTasksIdentity: the agent, with only container
// credentials, invokes the vend function signed as the task role and
// proves that role to the vendor; the listed role gets the restricted
// provider's token, another role caller_not_allowed (costing the provider
// nothing). Without the agent's token nothing is served; health needs none.
func TestAgentServesTheTasksIdentity(t *testing.T) {
	w := newWorld(t)
	good := w.startAgent(t, w.allowed, false)
	bad := w.startAgent(t, w.other, true)

	if a := good.get(t, "/healthz", nil); a.Status != 200 {
		t.Fatalf("health: %+v", a)
	}
	for name, h := range map[string]map[string]string{"none": nil, "wrong": {agent.Header: strings.ToUpper(good.Token)},
		"the extension's header": {extension.Header: good.Token}, "the other agent's": {agent.Header: bad.Token}} {
		if a := good.get(t, "/v1/tokens/payments?scope=read", h); a.Status != 401 || a.Error != "unauthorized" || a.AccessToken != "" {
			t.Fatalf("token %s: %+v", name, a)
		}
	}
	if n := len(w.invoke.Calls()); n != 0 {
		t.Fatalf("refused requests invoked the vend function %d times", n)
	}
	first := good.get(t, "/v1/tokens/payments?scope=read", good.auth())
	if first.Status != 200 || first.AccessToken == "" || first.ExpiresIn <= 0 {
		t.Fatalf("listed role: %+v", first)
	}
	if again := good.get(t, "/v1/tokens/payments?scope=read", good.auth()); again.AccessToken != first.AccessToken {
		t.Fatal("the second read was not served from the cache")
	}
	if good.Creds.served.Load() == 0 || good.Creds.refused.Load() != 0 {
		t.Fatalf("container credentials: %d served, %d refused", good.Creds.served.Load(), good.Creds.refused.Load())
	}
	calls := w.invoke.Calls()
	if len(calls) != 1 || calls[0].AccessKey != w.allowed.AccessKeyID {
		t.Fatalf("invocations %+v, want one signed with the task role's key %s", calls, w.allowed.AccessKeyID)
	}
	if a := bad.get(t, "/v1/tokens/payments?scope=read", bad.auth()); a.Status != 403 || a.Error != "caller_not_allowed" || a.AccessToken != "" {
		t.Fatalf("unlisted role: %+v", a)
	}
	if n := w.up.Server.Requests(w.payArn); n != 1 {
		t.Fatalf("%d upstream requests; the refusal must cost none", n)
	}
	// The same errors as the extension and the HTTP API.
	if a := good.get(t, "/v1/tokens/no-such", good.auth()); a.Status != 404 || a.Error != "unknown_provider" {
		t.Fatalf("unknown provider: %+v", a)
	}
	if a := good.get(t, "/v1/tokens/payments?min_ttl=-1", good.auth()); a.Status != 400 || a.Error != "invalid_request" {
		t.Fatalf("bad min_ttl: %+v", a)
	}
	// The audit names each role's verified session.
	deadline := time.Now().Add(5 * time.Second)
	for !(strings.Contains(w.audit.String(), "assumed-role/payments-task/payments-task") && strings.Contains(w.audit.String(), "assumed-role/reports-task/reports-task")) {
		if time.Now().After(deadline) {
			t.Fatalf("audit lacks the two roles:\n%s", w.audit.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The health subcommand, which a container health check runs.
	cmd := exec.Command(agentBinary(t), "health")
	cmd.Env = good.Env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tokenvendor-agent health: %v %s", err, out)
	}
}

// TestAgentConcurrentCallersShareOneFetch: many local callers asking at
// once for a token the agent does not hold cost one vend invocation and
// one upstream request; all get the same token.
func TestAgentConcurrentCallersShareOneFetch(t *testing.T) {
	w := newWorld(t)
	p := w.startAgent(t, w.allowed, false)
	w.invoke.SetDelay(300 * time.Millisecond)
	const callers = 32
	got := make([]answer, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() { got[i], errs[i] = p.try("/v1/tokens/demo-k2?scope=read", p.auth()) })
	}
	wg.Wait()
	for i, a := range got {
		if errs[i] != nil || a.Status != 200 || a.AccessToken != got[0].AccessToken {
			t.Fatalf("caller %d: %+v %v", i, a, errs[i])
		}
	}
	if n := len(w.invoke.Calls()); n != 1 {
		t.Fatalf("%d callers cost %d vend invocations, want 1", callers, n)
	}
	if n := w.up.Server.Requests(w.up.Defs["demo-k2"].ClientID); n != 1 {
		t.Fatalf("%d upstream requests, want 1", n)
	}
}

// TestAgentRenewsInTheBackground: a token past its refresh point is
// renewed by the agent itself, so the next caller reads a fresh one from
// the cache without waiting for the vend function.
func TestAgentRenewsInTheBackground(t *testing.T) {
	w := newWorld(t, sandbox.Client{ID: "short", Secret: "short-secret", Style: sandbox.K2, ExpiresIn: 10})
	p := w.startAgent(t, w.allowed, false, "--renew-every", "1s")
	first := p.get(t, "/v1/tokens/short?min_ttl=1", p.auth())
	if first.Status != 200 {
		t.Fatalf("%+v", first)
	}
	// Past half of 10 s the agent renews on its own; reads meanwhile are
	// served from the cache (min_ttl=1) and never invoke.
	deadline := time.Now().Add(12 * time.Second)
	a := first
	for a.AccessToken == first.AccessToken {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal in the background: %d invocations", len(w.invoke.Calls()))
		}
		time.Sleep(100 * time.Millisecond)
		if a = p.get(t, "/v1/tokens/short?min_ttl=1", p.auth()); a.Status != 200 {
			t.Fatalf("while renewing: %+v", a)
		}
	}
	if a.ExpiresIn < 5 {
		t.Fatalf("after the renewal: %+v", a)
	}
	if n := len(w.invoke.Calls()); n != 2 {
		t.Fatalf("%d invocations; the renewed token was not served from the cache", n)
	}
}

// TestAgentShutsDownGracefully: on SIGTERM the agent stops taking
// connections, the request in flight (waiting on the vend function) is
// answered, and it exits 0.
func TestAgentShutsDownGracefully(t *testing.T) {
	w := newWorld(t)
	p := w.startAgent(t, w.allowed, false)
	w.invoke.SetDelay(1500 * time.Millisecond)
	type result struct {
		a   answer
		err error
	}
	inflight := make(chan result, 1)
	go func() {
		a, err := p.try("/v1/tokens/demo-k2", p.auth())
		inflight <- result{a, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for len(w.invoke.Calls()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the request never reached the vend function")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// New connections are refused while the request in flight finishes.
	time.Sleep(200 * time.Millisecond)
	if _, err := http.Get("http://" + p.Addr + "/healthz"); err == nil {
		t.Fatal("a new connection was taken after SIGTERM")
	}
	select {
	case r := <-inflight:
		if r.err != nil || r.a.Status != 200 || r.a.AccessToken == "" {
			t.Fatalf("the request in flight: %+v %v", r.a, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request in flight was not answered")
	}
	select {
	case <-p.exited:
		if p.err != nil {
			t.Fatalf("the agent exited with %v:\n%s", p.err, p.out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not exit after SIGTERM")
	}
}

// TestAgentRefusesBadConfiguration: a non-loopback address, a missing
// function or token are refused at start, exit 2, one line naming what.
func TestAgentRefusesBadConfiguration(t *testing.T) {
	bin := agentBinary(t)
	dir := t.TempDir()
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "AWS_REGION=us-east-1", "AWS_EC2_METADATA_DISABLED=true",
		"TOKEN_VENDOR_FUNCTION=" + vendFunction, "TOKEN_VENDOR_AGENT_TOKEN=0123456789abcdef0123"}
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"any address", base, []string{"--addr", "0.0.0.0:2790"}, "not a loopback address"},
		{"a host's address", base, []string{"--addr", "10.1.2.3:2790"}, "not a loopback address"},
		{"empty host", append(base, "TOKEN_VENDOR_AGENT_ADDR=:2790"), nil, "not a loopback address"},
		{"no function", append(base, "TOKEN_VENDOR_FUNCTION="), nil, "no vend function"},
		{"no token", append(base, "TOKEN_VENDOR_AGENT_TOKEN="), nil, "no agent token"},
		{"short token", append(base, "TOKEN_VENDOR_AGENT_TOKEN=abc"), nil, "at least 16"},
		{"health elsewhere", base, []string{"health", "--addr", "192.0.2.1:2790"}, "not a loopback address"},
	} {
		// An agent that took the configuration would serve until killed.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, bin, c.args...)
		cmd.Env = c.env
		out, err := cmd.CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), c.want) || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("%s: %v, %q; want exit 2 naming %q", c.name, err, out, c.want)
		}
	}
}
