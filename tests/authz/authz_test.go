// Package authz proves who may have which token (docs/design.md §11) with
// real signature checks: IAM roles created in moto and assumed through its
// STS, moto started with request signing enforced, the vendor wired by
// app.New on DynamoDB Local, and each identity-bearing path driven as AWS
// drives it. A refused caller must cause no DynamoDB request and no
// upstream request, and every request leaves one audit record.
package authz

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/pkg/wire"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

const (
	functionName = "tv-authz-test"
	account      = "123456789012" // moto's default account, the vendor's
	accountB     = "210987654321" // another account, a consumer's
	// vendorID is the vend function's ARN, which proofs must name: the vendor
	// reads it from the invocation's context (lambdacontext).
	vendorID = "arn:aws:lambda:us-east-1:" + account + ":function:" + functionName
)

// counting counts the requests a client sends.
type counting struct {
	n    atomic.Int64
	next http.RoundTripper
}

func (c *counting) Do(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.next.RoundTrip(r)
}

type world struct {
	moto    *testenv.AuthMoto
	up      *vendtest.Upstream
	a       *app.App
	ddb     *counting
	logs    *testenv.SyncBuffer
	api     func(context.Context, events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error)
	invoke  lambda.Handler
	allowed aws.Credentials // role teams/eu/payments-app, session s1
	other   aws.Credentials // role other-app
	admin   aws.Credentials // role ops-admin
	arns    map[string]string
}

func setup(t *testing.T) *world { return setupWith(t, nil, nil) }

// setupWith is setup with the vendor's environment (as the template sets
// it, read by app.FromEnv) and a chance to edit the provider definitions.
func setupWith(t *testing.T, env map[string]string, edit func(map[string]*provider.Definition)) *world {
	t.Helper()
	ep := testenv.DynamoDB(t)
	w := &world{moto: testenv.StartAuthMoto(t, accountB), up: vendtest.NewUpstream(t), logs: &testenv.SyncBuffer{}, arns: map[string]string{}}
	_, w.allowed = w.moto.Role(t, "/teams/eu/", "payments-app", "s1")
	_, w.other = w.moto.Role(t, "/", "other-app", "s2")
	_, w.admin = w.moto.Role(t, "/", "ops-admin", "s3")
	for name, c := range map[string]aws.Credentials{"allowed": w.allowed, "other": w.other, "admin": w.admin} {
		id, err := w.moto.STS(c).GetCallerIdentity(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		w.arns[name] = *id.Arn
	}
	defs := map[string]*provider.Definition{}
	for n, d := range w.up.Defs {
		defs[n] = d
	}
	pay := *w.up.Defs["demo-k2"]
	pay.Name = "payments"
	// The role's path is not in its sessions' ARNs; the pattern with the path admits them.
	pay.AllowedCallers = []string{"arn:aws:iam::" + account + ":role/teams/eu/payments-app", "arn:aws:iam::" + account + ":role/ops-*"}
	pay.AdminCallers = []string{"arn:aws:iam::" + account + ":role/ops-admin"}
	if err := pay.Validate(); err != nil {
		t.Fatal(err)
	}
	defs["payments"] = &pay
	// A provider for a consumer in another account (TestCrossAccountDirectInvoke).
	partner := *w.up.Defs["demo-k2"]
	partner.Name, partner.AllowedCallers = "partner", []string{"arn:aws:iam::" + accountB + ":role/partners/consumer-b"}
	if err := partner.Validate(); err != nil {
		t.Fatal(err)
	}
	defs["partner"] = &partner
	if edit != nil {
		edit(defs)
	}

	w.ddb = &counting{next: http.DefaultTransport}
	client := dynamodb.NewFromConfig(testenv.Config(), func(o *dynamodb.Options) {
		o.BaseEndpoint, o.DisableValidateResponseChecksum, o.HTTPClient = aws.String(ep), true, w.ddb
	})
	cfg, err := app.FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	cfg.StaticProviders, cfg.Table, cfg.RefreshAhead, cfg.MetricsNamespace = defs, testenv.NewTable(t, ep), false, "TokenVendor"
	// No VENDOR_ID: in Lambda the vendor id is the invoked function's ARN.
	cfg.FunctionName, cfg.STSEndpoint = functionName, w.moto.Endpoint
	cfg.MetricsOutput = w.logs
	a, err := app.New(cfg, app.Clients{DynamoDB: client}, slog.New(slog.NewJSONHandler(w.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	w.a, w.api, w.invoke = a, lambdafn.APIGateway(a.Handler), lambda.NewHandler(lambdafn.Invoke(a.Gate, a.Proofs, a.Log, nil))
	return w
}

func (w *world) proof(t *testing.T, c aws.Credentials, endpoint, vendor string, at time.Time) *identity.Proof {
	t.Helper()
	p, err := identity.Sign(context.Background(), c, "us-east-1", endpoint, vendor, at)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (w *world) directInvoke(t *testing.T, providerName string, p *identity.Proof) (wire.TokenResponse, string, string) {
	t.Helper()
	ev := map[string]any{"provider": providerName, "scope": "read"}
	if p != nil {
		ev["identity"] = p
	}
	raw, _ := json.Marshal(ev)
	// As Lambda invokes it: the context names the function (by an alias here).
	ctx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{InvokedFunctionArn: vendorID + ":live"})
	out, err := w.invoke.Invoke(ctx, raw)
	var tok wire.TokenResponse
	if err != nil {
		return tok, wire.ErrorType(err), err.Error()
	}
	if err := json.Unmarshal(out, &tok); err != nil {
		t.Fatal(err)
	}
	return tok, "", ""
}

func (w *world) http(t *testing.T, domain, method, path, userARN string) events.APIGatewayV2HTTPResponse {
	t.Helper()
	query := "scope=read"
	if path == "/v1/providers" {
		query = ""
	}
	e := events.APIGatewayV2HTTPRequest{RawPath: path, RawQueryString: query,
		RequestContext: events.APIGatewayV2HTTPRequestContext{DomainName: domain, HTTP: events.APIGatewayV2HTTPRequestContextHTTPDescription{Method: method, Path: path}}}
	if userARN != "" {
		e.RequestContext.Authorizer = &events.APIGatewayV2HTTPRequestContextAuthorizerDescription{IAM: &events.APIGatewayV2HTTPRequestContextAuthorizerIAMDescription{
			UserARN: userARN, AccountID: account, PrincipalOrgID: "o-test"}}
	}
	resp, err := w.api(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// audits returns the audit records logged so far.
func (w *world) audits(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(w.logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "audit" {
			out = append(out, rec)
		}
	}
	return out
}

func tokenPrefix(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:6])
}

const (
	apiDomain = "abc123.execute-api.us-east-1.amazonaws.com"
	urlDomain = "xyz789.lambda-url.us-east-1.on.aws"
)

func TestAllowedCallersOnEveryPath(t *testing.T) {
	w := setup(t)
	upstream := func() int { return w.up.Server.Requests(w.up.Defs["demo-k2"].ClientID) }

	// Refused first, on a cold vendor: nothing reaches DynamoDB or the provider.
	refusals := []struct {
		name, path string
		run        func() (int, string) // status or 0, error code / errorType
	}{
		{"api, unlisted role", "api", func() (int, string) {
			r := w.http(t, apiDomain, "GET", "/v1/tokens/payments", w.arns["other"])
			return r.StatusCode, r.Body
		}},
		{"api, no identity", "api", func() (int, string) {
			r := w.http(t, apiDomain, "GET", "/v1/tokens/payments", "")
			return r.StatusCode, r.Body
		}},
		{"function URL, unlisted role", "url", func() (int, string) {
			r := w.http(t, urlDomain, "GET", "/v1/tokens/payments", w.arns["other"])
			return r.StatusCode, r.Body
		}},
		{"invoke, unlisted role's proof", "invoke", func() (int, string) {
			_, typ, msg := w.directInvoke(t, "payments", w.proof(t, w.other, w.moto.Endpoint, vendorID, time.Now()))
			return 0, typ + " " + msg
		}},
		{"invoke, no proof", "invoke", func() (int, string) {
			_, typ, msg := w.directInvoke(t, "payments", nil)
			return 0, typ + " " + msg
		}},
	}
	for _, r := range refusals {
		status, body := r.run()
		if (status != 0 && status != 403) || !strings.Contains(body, "caller_not_allowed") && !strings.Contains(body, "CallerNotAllowed") {
			t.Fatalf("%s: got %d %s", r.name, status, body)
		}
	}
	if n := w.ddb.n.Load(); n != 0 {
		t.Fatalf("refused callers caused %d DynamoDB requests", n)
	}
	if n := upstream(); n != 0 {
		t.Fatalf("refused callers caused %d upstream requests", n)
	}

	// Admitted on every path.
	var tokens []string
	for _, domain := range []string{apiDomain, urlDomain} {
		r := w.http(t, domain, "GET", "/v1/tokens/payments", w.arns["allowed"])
		var tok wire.TokenResponse
		if r.StatusCode != 200 || json.Unmarshal([]byte(r.Body), &tok) != nil || tok.AccessToken == "" {
			t.Fatalf("%s, listed role: %d %s", domain, r.StatusCode, r.Body)
		}
		tokens = append(tokens, tok.AccessToken)
	}
	tok, typ, msg := w.directInvoke(t, "payments", w.proof(t, w.allowed, w.moto.Endpoint, vendorID, time.Now()))
	if typ != "" || tok.AccessToken == "" {
		t.Fatalf("invoke with the listed role's proof: %s %s", typ, msg)
	}
	tokens = append(tokens, tok.AccessToken)
	// Providers without allowed_callers take any verified principal the
	// vendor serves (its own account here); without a proof, see
	// TestUnverifiedDirectInvokeRefusedByDefault.
	if tok, typ, msg := w.directInvoke(t, "demo-k2", w.proof(t, w.other, w.moto.Endpoint, vendorID, time.Now())); typ != "" || tok.AccessToken == "" {
		t.Fatalf("unrestricted provider with a proof: %s %s", typ, msg)
	}

	// Audit: one record per request, field by field.
	recs := w.audits(t)
	if len(recs) != len(refusals)+4 {
		t.Fatalf("want %d audit records, got %d", len(refusals)+4, len(recs))
	}
	want := []map[string]string{
		{"path": "api", "caller": w.arns["other"], "outcome": "principal_not_listed"},
		{"path": "api", "caller": "unverified", "outcome": "no_identity"},
		{"path": "url", "caller": w.arns["other"], "outcome": "principal_not_listed"},
		{"path": "invoke", "caller": w.arns["other"], "outcome": "principal_not_listed"},
		{"path": "invoke", "caller": "unverified", "outcome": "no_identity"},
		{"path": "api", "caller": w.arns["allowed"], "outcome": "granted", "cache": "upstream", "token_sha256_prefix": tokenPrefix(tokens[0])},
		{"path": "url", "caller": w.arns["allowed"], "outcome": "granted", "cache": "l1", "token_sha256_prefix": tokenPrefix(tokens[1])},
		{"path": "invoke", "caller": w.arns["allowed"], "outcome": "granted", "cache": "l1", "token_sha256_prefix": tokenPrefix(tokens[2])},
		{"path": "invoke", "caller": w.arns["other"], "outcome": "granted", "provider": "demo-k2"},
	}
	for i, wf := range want {
		rec := recs[i]
		if _, ok := wf["provider"]; !ok {
			wf["provider"] = "payments"
		}
		wf["operation"], wf["scope"] = "vend", "read"
		for k, v := range wf {
			if got, _ := rec[k].(string); got != v {
				t.Errorf("audit record %d: %s = %q, want %q (%v)", i, k, got, v, rec)
			}
		}
		if wf["caller"] != "unverified" && rec["caller_account"] != account {
			t.Errorf("audit record %d: caller_account %v", i, rec["caller_account"])
		}
		if wf["outcome"] != "granted" && rec["detail"] == nil {
			t.Errorf("audit record %d: a refusal without its reason in words", i)
		}
	}
	if err := w.a.Metrics.Flush(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(w.logs.String(), `"CallerRefusals":5`) {
		t.Errorf("CallerRefusals metric not 5 in the EMF output")
	}
	// Never a token, a session token or a signature in the logs.
	logs := w.logs.String()
	for _, s := range append(tokens, w.allowed.SessionToken, w.other.SessionToken, w.allowed.SecretAccessKey, w.up.Defs["demo-k2"].ClientSecret) {
		if strings.Contains(logs, s) {
			t.Fatalf("a token, credential or secret reached the logs")
		}
	}
	if strings.Contains(logs, "Signature=") || strings.Contains(logs, "iam_request_headers") {
		t.Fatal("a proof reached the logs")
	}
}

// TestBadProofsRefused: each way a proof can be wrong is refused, says why,
// never echoes the proof, and costs no store or upstream request.
func TestBadProofsRefused(t *testing.T) {
	w := setup(t)
	now := time.Now()
	forged := w.proof(t, w.allowed, w.moto.Endpoint, vendorID, now)
	forged.Headers = editHeaders(t, forged.Headers, func(h map[string][]string) {
		a := h["Authorization"][0]
		h["Authorization"][0] = a[:len(a)-8] + "00000000"
	})
	altered := w.proof(t, w.allowed, w.moto.Endpoint, "another-vendor", now)
	altered.Headers = editHeaders(t, altered.Headers, func(h map[string][]string) { h[identity.VendorHeader] = []string{vendorID} })
	moved := w.proof(t, w.allowed, w.moto.Endpoint, vendorID, now)
	moved.URL = base64.StdEncoding.EncodeToString([]byte("https://sts.attacker.example/"))
	cases := []struct {
		name   string
		p      *identity.Proof
		reason string
	}{
		{"forged signature", forged, identity.SignatureRejected},
		{"older than its window", w.proof(t, w.allowed, w.moto.Endpoint, vendorID, now.Add(-6*time.Minute)), identity.ProofExpired},
		{"for another vendor", w.proof(t, w.allowed, w.moto.Endpoint, "another-vendor", now), identity.ProofOtherVendor},
		{"request altered after signing", altered, identity.SignatureRejected},
		{"signed for another host", w.proof(t, w.allowed, "https://sts.attacker.example", vendorID, now), identity.ProofOtherHost},
		{"pointing at another host", moved, identity.ProofOtherHost},
		{"garbage", &identity.Proof{Method: "POST", URL: "%%%", Body: "", Headers: ""}, identity.ProofMalformed},
	}
	for _, c := range cases {
		_, typ, msg := w.directInvoke(t, "payments", c.p)
		if typ != "CallerNotAllowed" || !strings.Contains(msg, c.reason) {
			t.Errorf("%s: got %s %q, want CallerNotAllowed with %s", c.name, typ, msg, c.reason)
		}
		sig := c.p.Headers
		if len(sig) > 40 && strings.Contains(msg, sig[len(sig)-40:]) || strings.Contains(msg, w.allowed.SessionToken) {
			t.Errorf("%s: the refusal echoes the proof", c.name)
		}
	}
	if n, u := w.ddb.n.Load(), w.up.Server.Requests(w.up.Defs["demo-k2"].ClientID); n != 0 || u != 0 {
		t.Fatalf("bad proofs caused %d DynamoDB and %d upstream requests", n, u)
	}
}

func editHeaders(t *testing.T, b64 string, edit func(map[string][]string)) string {
	t.Helper()
	raw, _ := base64.StdEncoding.DecodeString(b64)
	var h map[string][]string
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	edit(h)
	out, _ := json.Marshal(h)
	return base64.StdEncoding.EncodeToString(out)
}

// TestOperatorOperations: forced refresh and revoke need admin_callers, a
// flood of forced refreshes makes one upstream request, and the listing
// shows only what the caller may vend.
func TestOperatorOperations(t *testing.T) {
	w := setup(t)
	if r := w.http(t, apiDomain, "GET", "/v1/tokens/payments", w.arns["allowed"]); r.StatusCode != 200 {
		t.Fatal(r.Body)
	}
	before := w.up.Server.Requests(w.up.Defs["demo-k2"].ClientID)
	for _, route := range []string{"/v1/tokens/payments/refresh", "/v1/tokens/payments/revoke"} {
		// The listed consumer is not an operator: admin_callers is set.
		if r := w.http(t, apiDomain, "POST", route, w.arns["allowed"]); r.StatusCode != 403 || !strings.Contains(r.Body, "admin_callers") {
			t.Fatalf("%s by a consumer: %d %s", route, r.StatusCode, r.Body)
		}
	}
	if got := w.up.Server.Requests(w.up.Defs["demo-k2"].ClientID); got != before {
		t.Fatalf("refused operator calls made %d upstream requests", got-before)
	}
	var wg sync.WaitGroup
	codes := make([]int, 20)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = w.http(t, apiDomain, "POST", "/v1/tokens/payments/refresh", w.arns["admin"]).StatusCode
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 200 {
			t.Fatalf("forced refresh %d: %d", i, c)
		}
	}
	if got := w.up.Server.Requests(w.up.Defs["demo-k2"].ClientID) - before; got != 1 {
		t.Fatalf("20 forced refreshes made %d upstream requests, want 1", got)
	}
	if r := w.http(t, apiDomain, "POST", "/v1/tokens/payments/revoke", w.arns["admin"]); r.StatusCode != 204 {
		t.Fatalf("revoke by the operator: %d %s", r.StatusCode, r.Body)
	}
	list := func(who string) string {
		e := w.http(t, apiDomain, "GET", "/v1/providers", w.arns[who])
		return e.Body
	}
	if l := list("other"); strings.Contains(l, `"payments"`) || !strings.Contains(l, `"demo-k2"`) {
		t.Fatalf("listing for an unlisted caller: %s", l)
	}
	if l := list("allowed"); !strings.Contains(l, `"payments"`) {
		t.Fatalf("listing for a listed caller: %s", l)
	}
}

// TestSTSUnavailable: callers whose proof was verified keep working while
// STS is down; new proofs get a clear retryable error, on unrestricted
// providers too (they need a verified caller).
func TestSTSUnavailable(t *testing.T) {
	w := setup(t)
	sts, err := testenv.NewSwitchable(w.moto.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer sts.Close()
	verifier := &identity.Verifier{Endpoint: sts.URL, VendorID: vendorID}
	inv := lambda.NewHandler(lambdafn.Invoke(w.a.Gate, verifier, w.a.Log, nil))
	call := func(providerName string, p *identity.Proof) (string, string) {
		ev, _ := json.Marshal(map[string]any{"provider": providerName, "scope": "read", "identity": p})
		_, err := inv.Invoke(context.Background(), ev)
		if err != nil {
			return wire.ErrorType(err), err.Error()
		}
		return "", ""
	}
	known := w.proof(t, w.allowed, sts.URL, vendorID, time.Now())
	if typ, msg := call("payments", known); typ != "" {
		t.Fatalf("with STS up: %s %s", typ, msg)
	}
	sts.Down.Store(true)
	if typ, msg := call("payments", known); typ != "" {
		t.Fatalf("cached identity while STS is down: %s %s", typ, msg)
	}
	fresh := w.proof(t, w.allowed, sts.URL, vendorID, time.Now().Add(time.Second))
	if typ, msg := call("payments", fresh); typ != "IdentityUnavailable" || !strings.Contains(msg, "retry") {
		t.Fatalf("new identity while STS is down: %s %q, want IdentityUnavailable, retryable", typ, msg)
	}
	// Unrestricted providers need a verified caller too (§11): the identity
	// already verified keeps working, a new one waits for STS like any.
	if typ, msg := call("demo-k2", known); typ != "" {
		t.Fatalf("unrestricted provider, cached identity, while STS is down: %s %s", typ, msg)
	}
	if typ, msg := call("demo-k2", fresh); typ != "IdentityUnavailable" || !strings.Contains(msg, "retry") {
		t.Fatalf("unrestricted provider, new identity, while STS is down: %s %q, want IdentityUnavailable, retryable", typ, msg)
	}
}
