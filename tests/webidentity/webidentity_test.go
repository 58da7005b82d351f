// Package webidentity proves the secretless client authentication end to
// end: the vendor's role gets an AWS-issued JWT from STS GetWebIdentityToken
// (a stand-in for that one operation, tests/ststandin, which moto lacks),
// sends it as the client assertion, and the sandbox's federated client
// (trusting one issuer, subject and audience, as Entra ID federated
// identity credentials do) verifies it against the issuer's JWKS. The token
// is cached and vended on every path; each refusal is typed; the JWT never
// reaches a log or an answer.
package webidentity

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/pkg/wire"
	"github.com/token-vendor/token-vendor/tests/ststandin"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

const role = "arn:aws:iam::123456789012:role/token-vendor-VendFunctionRole-ABC"

type world struct {
	sts    *ststandin.Server
	up     *vendtest.Upstream
	a      *app.App
	logs   *testenv.SyncBuffer
	api    func(context.Context, events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error)
	invoke lambda.Handler
}

// setup registers federated clients at the sandbox: "entra" trusts the
// stand-in's issuer, the vendor's role and Entra's audience; the others
// each trust something else.
func setup(t *testing.T, mods ...func(*app.Config)) *world {
	t.Helper()
	s, err := ststandin.Start(role)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	up := vendtest.NewUpstream(t)
	defs := map[string]*provider.Definition{}
	for name, f := range map[string]sandbox.Federation{
		"entra":          {Issuer: s.Issuer(), Subject: role, Audience: provider.DefaultWebIdentityAudience},
		"entra-es384":    {Issuer: s.Issuer(), Subject: role, Audience: provider.DefaultWebIdentityAudience},
		"wrong-issuer":   {Issuer: "https://login.example/other-issuer", Subject: role, Audience: provider.DefaultWebIdentityAudience},
		"wrong-subject":  {Issuer: s.Issuer(), Subject: "arn:aws:iam::123456789012:role/someone-else", Audience: provider.DefaultWebIdentityAudience},
		"wrong-audience": {Issuer: s.Issuer(), Subject: role, Audience: "api://another-audience"},
		"fed-a":          {Issuer: s.Issuer(), Subject: role, Audience: provider.DefaultWebIdentityAudience},
		"fed-b":          {Issuer: s.Issuer(), Subject: role, Audience: provider.DefaultWebIdentityAudience},
	} {
		up.Server.AddClient(sandbox.Client{ID: name + "-app", Style: sandbox.K2, Federated: &f})
		d := &provider.Definition{Name: name, TokenURL: up.URL + sandbox.K2TokenPath, ClientID: name + "-app", AuthMethod: provider.AuthAWSWebIdentity}
		if name == "entra" {
			d.WebIdentitySeconds = 600
		}
		if name == "entra-es384" {
			d.WebIdentityAlg = "ES384"
		}
		if err := d.Validate(); err != nil {
			t.Fatal(err)
		}
		defs[name] = d
	}
	logs := &testenv.SyncBuffer{}
	cfg := app.Defaults()
	cfg.StaticProviders, cfg.MetricsNamespace, cfg.RefreshAhead, cfg.L1MaxAge = defs, "off", false, -1
	cfg.AllowUnverifiedCallers = true // identity is not the subject: direct invokes carry no proof
	for _, m := range mods {
		m(&cfg)
	}
	stsc := sts.NewFromConfig(testenv.Config(), func(o *sts.Options) { o.BaseEndpoint = aws.String(s.URL) })
	a, err := app.New(cfg, app.Clients{STS: stsc}, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return &world{sts: s, up: up, a: a, logs: logs, api: lambdafn.APIGateway(a.Handler), invoke: lambda.NewHandler(lambdafn.Invoke(a.Gate, a.Proofs, a.Log, nil))}
}

func (w *world) viaInvoke(t *testing.T, name string) (wire.TokenResponse, string, string) {
	t.Helper()
	out, err := w.invoke.Invoke(context.Background(), []byte(`{"provider":"`+name+`"}`))
	var tok wire.TokenResponse
	if err != nil {
		return tok, wire.ErrorType(err), err.Error()
	}
	json.Unmarshal(out, &tok)
	return tok, "", ""
}

func TestSecretlessEndToEnd(t *testing.T) {
	w := setup(t)
	tok, typ, msg := w.viaInvoke(t, "entra")
	if typ != "" || tok.AccessToken == "" || !w.up.Server.Valid(tok.AccessToken) {
		t.Fatalf("direct invoke: %s %s", typ, msg)
	}
	e := events.APIGatewayV2HTTPRequest{RawPath: "/v1/tokens/entra", RequestContext: events.APIGatewayV2HTTPRequestContext{HTTP: events.APIGatewayV2HTTPRequestContextHTTPDescription{Method: "GET"}}}
	resp, err := w.api(context.Background(), e)
	var viaAPI wire.TokenResponse
	if err != nil || resp.StatusCode != 200 || json.Unmarshal([]byte(resp.Body), &viaAPI) != nil || viaAPI.AccessToken != tok.AccessToken {
		t.Fatalf("HTTP API: %d %s", resp.StatusCode, resp.Body)
	}
	if n := w.up.Server.Requests("entra-app"); n != 1 || w.sts.Calls() != 1 {
		t.Fatalf("%d token requests, %d STS calls; want 1 and 1 (cached)", n, w.sts.Calls())
	}
	if tok, typ, msg := w.viaInvoke(t, "entra-es384"); typ != "" || !w.up.Server.Valid(tok.AccessToken) || w.sts.Calls() != 2 {
		t.Fatalf("ES384: %s %s (%d STS calls)", typ, msg, w.sts.Calls())
	}
	// A forced refresh needs another assertion: the JWT is reused while valid.
	if _, err := w.a.Vendor.Refresh(context.Background(), vendReq("entra")); err != nil || w.sts.Calls() != 2 || w.up.Server.Requests("entra-app") != 2 {
		t.Fatalf("forced refresh: %v, %d STS calls", err, w.sts.Calls())
	}
	if strings.Contains(w.logs.String(), "eyJ") {
		t.Fatal("a JWT reached the logs")
	}
}

func TestSecretlessRefusals(t *testing.T) {
	w := setup(t)
	for _, name := range []string{"wrong-issuer", "wrong-subject", "wrong-audience"} {
		if _, typ, msg := w.viaInvoke(t, name); typ != "UpstreamRejected" || !strings.Contains(msg, "invalid_client") {
			t.Errorf("%s: %s %s", name, typ, msg)
		}
	}
	for _, mode := range []ststandin.Mode{ststandin.Expired, ststandin.Unsigned} {
		w := setup(t)
		w.sts.SetMode(mode)
		if _, typ, msg := w.viaInvoke(t, "entra"); typ != "UpstreamRejected" || !strings.Contains(msg, "invalid_client") {
			t.Errorf("%s token: %s %s", mode, typ, msg)
		}
	}
	w = setup(t)
	w.sts.SetMode(ststandin.Disabled)
	if _, typ, msg := w.viaInvoke(t, "entra"); typ != "UpstreamRejected" || !strings.Contains(msg, "outbound identity federation is not enabled") || w.up.Server.Requests("entra-app") != 0 {
		t.Errorf("federation disabled: %s %s", typ, msg)
	}
	w = setup(t)
	w.sts.SetMode(ststandin.Throttle)
	if _, typ, msg := w.viaInvoke(t, "entra"); typ != "UpstreamUnavailable" || w.up.Server.Requests("entra-app") != 0 {
		t.Errorf("STS throttled: %s %s (want a retryable UpstreamUnavailable)", typ, msg)
	}
	if strings.Contains(w.logs.String(), "eyJ") {
		t.Fatal("a JWT reached the logs")
	}
}

func vendReq(name string) vend.Request { return vend.Request{Provider: name, MinTTL: -1} }

// TestEachProviderItsOwnJWT: two providers federated with one audience
// (Entra's default) each get their own JWT through the vendor, so the JWT
// one provider's endpoint received is never sent to the other's. Before
// the fix one STS call served both (the JWT was cached per audience,
// algorithm and duration).
func TestEachProviderItsOwnJWT(t *testing.T) {
	w := setup(t)
	for _, name := range []string{"fed-a", "fed-b"} {
		if tok, typ, msg := w.viaInvoke(t, name); typ != "" || !w.up.Server.Valid(tok.AccessToken) {
			t.Fatalf("%s: %s %s", name, typ, msg)
		}
	}
	if n := w.sts.Calls(); n != 2 {
		t.Fatalf("%d STS calls for two providers; want one JWT each", n)
	}
}

// TestOneCallersDeadlineFailsNoOtherProvider: STS is slow; a caller of
// fed-a whose deadline passes fails alone, and a caller of fed-b (same
// audience) meanwhile gets its token once STS answers, with no error
// naming fed-a and no cooldown refusing fed-b afterwards. Before the fix
// fed-b's fetch joined fed-a's STS call, which ran on fed-a's caller's
// context: it failed with an error naming fed-a and opened fed-b's
// fleet-wide cooldown. One attempt per fetch, so a retry cannot hide it.
func TestOneCallersDeadlineFailsNoOtherProvider(t *testing.T) {
	w := setup(t, func(c *app.Config) { c.UpstreamAttempts = 1 })
	w.sts.Hold()
	defer w.sts.Release()
	ctxA, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	errA := make(chan error, 1)
	go func() { _, err := w.a.Vendor.Token(ctxA, vendReq("fed-a")); errA <- err }()
	for w.sts.Calls() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	errB := make(chan error, 1)
	go func() { _, err := w.a.Vendor.Token(context.Background(), vendReq("fed-b")); errB <- err }()
	if err := <-errA; err == nil {
		t.Fatal("fed-a's caller got a token STS never issued")
	}
	w.sts.Release()
	if err := <-errB; err != nil {
		t.Fatalf("fed-b's caller failed by fed-a's deadline: %v", err)
	}
	if _, err := w.a.Vendor.Token(context.Background(), vendReq("fed-b")); err != nil {
		t.Fatalf("fed-b afterwards: %v", err)
	}
}
