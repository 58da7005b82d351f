// Package extension runs the token-vendor Lambda extension as Lambda does:
// the layer's executable built by its build-<LogicalId> target, beside a
// consumer function whose runtime is a real Python script using urllib,
// both driven through the Extensions API and Runtime API of
// tests/lambdart, with the vend function's code path on DynamoDB Local
// behind a Lambda Invoke endpoint.
package extension

import (
	"encoding/json"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/lambdart"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// vendService is the Lambda Invoke API for the vend function, running its
// real handler (lambdart.InvokeAPI, which tests/agent uses too).
type vendService struct{ *lambdart.InvokeAPI }

func startVendService(t *testing.T, v lambdafn.Vendor, proofs lambdafn.Verifier) *vendService {
	s := lambdart.StartInvokeAPI(lambda.NewHandler(lambdafn.Invoke(v, proofs, slog.New(slog.DiscardHandler), nil)))
	t.Cleanup(s.Close)
	return &vendService{s}
}

// invocations are when each invocation came.
func (s *vendService) invocations() []time.Time {
	var at []time.Time
	for _, c := range s.Calls() {
		at = append(at, c.At)
	}
	return at
}

type answer struct {
	Status      int    `json:"status"`
	Error       string `json:"error"`
	TokenSHA256 string `json:"token_sha256"`
	ExpiresIn   int64  `json:"expires_in"`
}

type world struct {
	env  *lambdart.Env
	vend *vendService
	up   *vendtest.Upstream
}

func start(t *testing.T, clients ...sandbox.Client) *world {
	t.Helper()
	ep := testenv.DynamoDB(t)
	if _, err := exec.LookPath("python3"); err != nil {
		testenv.SkipOrFail(t, "python3 is needed for the consumer function")
	}
	up := vendtest.NewUpstream(t)
	for _, c := range clients {
		up.Server.AddClient(c)
		def := *up.Defs["demo-k2"]
		def.Name, def.ClientID, def.ClientSecret = c.ID, c.ID, c.Secret
		up.Defs[c.ID] = &def
	}
	st := dynamostore.New(testenv.DynamoDBClient(ep), testenv.NewTable(t, ep))
	v := vend.New(registry.NewStatic(up.Defs), vendtest.Client(nil), st, vend.Options{DisableRefreshAhead: true})
	svc := startVendService(t, v, nil)
	env := startConsumer(t, svc, map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_SESSION_TOKEN": "session-" + testenv.RandomSuffix(),
		"TOKEN_VENDOR_FUNCTION": "arn:aws:lambda:us-east-1:123456789012:function:token-vendor-VendFunction"})
	return &world{env: env, vend: svc, up: up}
}

// startConsumer runs the built extension layer beside the Python consumer,
// invoking svc as the vend function, with the given credentials and settings.
func startConsumer(t *testing.T, svc *vendService, vars map[string]string) *lambdart.Env {
	t.Helper()
	bin, err := lambdart.BuildExtension("TokenExtensionArm64", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	consumer, _ := filepath.Abs("testdata/consumer.py")
	vars["AWS_ENDPOINT_URL_LAMBDA"], vars["TOKEN_VENDOR_PORT"] = svc.URL, strconv.Itoa(port)
	env, err := lambdart.StartEnv("consumer", []string{"python3", consumer}, []string{bin}, vars)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Stop)
	return env
}

func (w *world) call(t *testing.T, event map[string]any) answer {
	t.Helper()
	b, _ := json.Marshal(event)
	inv, err := w.env.Invoke(b, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var a answer
	if err := json.Unmarshal(inv.Payload, &a); err != nil || inv.ErrorType != "" {
		t.Fatalf("consumer answered %s (%s): %v", inv.Payload, inv.ErrorType, err)
	}
	return a
}

// noWorkOutside checks every vend invocation fell inside an invocation of
// the consumer's environment: the extension does nothing once frozen.
func (w *world) noWorkOutside(t *testing.T) {
	t.Helper()
	for _, at := range w.vend.invocations() {
		inside := false
		for _, win := range w.env.Windows() {
			inside = inside || (!at.Before(win.Start) && !at.After(win.End))
		}
		if !inside {
			t.Fatalf("the vend function was invoked at %v, outside every invocation", at)
		}
	}
}

func TestExtensionServesTokensLocally(t *testing.T) {
	w := start(t)
	get := map[string]any{"path": "/v1/tokens/demo-k2?scope=read"}
	first := w.call(t, get)
	if first.Status != 200 || first.TokenSHA256 == "" || first.ExpiresIn <= 0 || len(w.vend.invocations()) != 1 {
		t.Fatalf("first call: %+v, %d vend invocations", first, len(w.vend.invocations()))
	}
	for i := 0; i < 5; i++ {
		if a := w.call(t, get); a.Status != 200 || a.TokenSHA256 != first.TokenSHA256 {
			t.Fatalf("call %d: %+v", i, a)
		}
	}
	if n := len(w.vend.invocations()); n != 1 {
		t.Fatalf("later calls invoked the vend function: %d invocations", n)
	}
	// Without the session token, or with another, nothing is served.
	for _, h := range []string{"none", "wrong"} {
		if a := w.call(t, map[string]any{"path": "/v1/tokens/demo-k2?scope=read", "header": h}); a.Status != 401 || a.TokenSHA256 != "" || a.Error != "unauthorized" {
			t.Fatalf("header %s: %+v", h, a)
		}
	}
	// The same errors as the HTTP API, relayed from the vend function.
	if a := w.call(t, map[string]any{"path": "/v1/tokens/no-such"}); a.Status != 404 || a.Error != "unknown_provider" {
		t.Fatalf("unknown provider: %+v", a)
	}
	if a := w.call(t, map[string]any{"path": "/v1/tokens/demo-dot?scope=payments"}); a.Status != 403 || a.Error != "scope_not_allowed" {
		t.Fatalf("scope not allowed: %+v", a)
	}
	// A rejected token is replaced once; the same report again gets the replacement.
	before := len(w.vend.invocations())
	rej := map[string]any{"path": "/v1/tokens/demo-k2/rejected?scope=read", "method": "POST", "body": map[string]string{"token_sha256": first.TokenSHA256}}
	second := w.call(t, rej)
	if second.Status != 200 || second.TokenSHA256 == first.TokenSHA256 || len(w.vend.invocations()) != before+1 {
		t.Fatalf("rejected: %+v, %d more vend invocations", second, len(w.vend.invocations())-before)
	}
	if again := w.call(t, rej); again.TokenSHA256 != second.TokenSHA256 || len(w.vend.invocations()) != before+1 {
		t.Fatalf("second report of the same token: %+v", again)
	}
	if a := w.call(t, get); a.TokenSHA256 != second.TokenSHA256 {
		t.Fatal("the replacement is not the cached token")
	}
	w.noWorkOutside(t)
	took, err := w.env.Shutdown(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("extension exited %v after SHUTDOWN", took)
}

// A token past its refresh point is renewed at the start of the next
// invocation, inside it; frozen or thawed in between, the extension does
// nothing.
func TestExtensionRenewsWithinInvocations(t *testing.T) {
	w := start(t, sandbox.Client{ID: "short", Secret: "short-secret", Style: sandbox.K2, ExpiresIn: 10})
	get := map[string]any{"path": "/v1/tokens/short?min_ttl=1"}
	first := w.call(t, get)
	if first.Status != 200 {
		t.Fatalf("%+v", first)
	}
	if err := w.env.Thaw(); err != nil { // let it run: it must not use the time
		t.Fatal(err)
	}
	time.Sleep(5500 * time.Millisecond)
	if n := len(w.vend.invocations()); n != 1 {
		t.Fatalf("%d vend invocations between invocations", n)
	}
	// Past the refresh point (half of 10 s): the invocation is served (the
	// old token still has more than min_ttl) while the extension renews.
	if a := w.call(t, get); a.Status != 200 || a.ExpiresIn < 1 {
		t.Fatalf("during the renewal: %+v", a)
	}
	if n := len(w.vend.invocations()); n != 2 {
		t.Fatalf("renewal took %d vend invocations, want 1", n-1)
	}
	if a := w.call(t, get); a.Status != 200 || a.TokenSHA256 == first.TokenSHA256 || a.ExpiresIn < 5 {
		t.Fatalf("after the renewal: %+v", a)
	}
	if n := len(w.vend.invocations()); n != 2 {
		t.Fatalf("%d vend invocations; the renewed token was not served from the cache", n)
	}
	w.noWorkOutside(t)
}

// A renewal is not a use: a key asked for once is renewed at most once,
// at the next invocation past its refresh point, and not at the
// invocations after that which do not ask for it, so the vendor sees the
// consumer's real use (its idle retirement applies) and the extension
// does not invoke the vend function for tokens nobody wants.
func TestExtensionRenewsOnlyKeysInUse(t *testing.T) {
	w := start(t, sandbox.Client{ID: "short", Secret: "short-secret", Style: sandbox.K2, ExpiresIn: 10})
	if a := w.call(t, map[string]any{"path": "/v1/tokens/short?min_ttl=1"}); a.Status != 200 {
		t.Fatalf("%+v", a)
	}
	other := map[string]any{"path": "/v1/tokens/short", "header": "none"} // an invocation that asks for nothing
	for i, want := range []int{2, 2} {
		time.Sleep(5500 * time.Millisecond) // past the refresh point (half of 10 s)
		if a := w.call(t, other); a.Status != 401 {
			t.Fatalf("%+v", a)
		}
		if n := len(w.vend.invocations()); n != want {
			t.Fatalf("invocation %d past the refresh point: %d vend invocations, want %d", i+1, n, want)
		}
	}
	w.noWorkOutside(t)
}
