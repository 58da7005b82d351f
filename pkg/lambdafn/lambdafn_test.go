package lambdafn_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"

	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

type parts struct {
	v  *vend.Vendor
	up *vendtest.Upstream
	st *store.Memory
	h  *httpapi.Handler
}

func newParts(t testing.TB) parts {
	up := vendtest.NewUpstream(t)
	st := store.NewMemory(nil)
	provs := registry.NewStatic(up.Defs)
	v := vend.New(provs, vendtest.Client(nil), st, vend.Options{})
	return parts{v: v, up: up, st: st, h: httpapi.New(v, provs, nil, nil)}
}

func typeName(err error) string {
	if err == nil {
		return "<nil>"
	}
	return wire.ErrorType(err)
}

var quiet = slog.New(slog.DiscardHandler)

func TestInvokeErrorsAreTyped(t *testing.T) {
	p := newParts(t)
	h := lambda.NewHandler(lambdafn.Invoke(p.v, nil, quiet, nil))
	cases := map[string]string{
		`{"provider":"demo-k2"}`:                                              "",
		`{"provider":"demo-dot","scope":"read write","min_ttl":0}`:            "",
		`{"provider":"demo-dot","scope":"payments"}`:                          "ScopeNotAllowed",
		`{"provider":"nope"}`:                                                 "UnknownProvider",
		`{"provider":"demo-k2","min_ttl":-1}`:                                 "InvalidRequest",
		`{"provider":"demo-k2","min_ttl":99999999}`:                           "InvalidRequest",
		`{"provider":"demo-k2","min_ttl":"1"}`:                                "InvalidRequest",
		`{"provider":"demo-k2","surprise":true}`:                              "InvalidRequest",
		`{"scope":"read"}`:                                                    "InvalidRequest",
		`{"provider":"demo-k2","rejected_token_sha256":"xyz"}`:                "InvalidRequest",
		`{"provider":"demo-k2","scope":"a\"b"}`:                               "InvalidRequest",
		`[1,2]`:                                                               "InvalidRequest",
		`"provider"`:                                                          "InvalidRequest",
		`{"provider":"demo-k2","scope":"` + strings.Repeat("x", 70000) + `"}`: "InvalidRequest",
	}
	for ev, want := range cases {
		out, err := h.Invoke(context.Background(), []byte(ev))
		switch {
		case want == "" && err != nil:
			t.Errorf("%.60s: %v", ev, err)
		case want == "" && !strings.Contains(string(out), `"access_token"`):
			t.Errorf("%.60s: %s", ev, out)
		case want != "" && (err == nil || typeName(err) != want):
			t.Errorf("%.60s: got %v (%s), want %s", ev, err, typeName(err), want)
		}
	}
	p.up.Server.SetFault(sandboxFault(401))
	if _, err := h.Invoke(context.Background(), []byte(`{"provider":"demo-mobi"}`)); typeName(err) != "UpstreamRejected" || !strings.Contains(err.Error(), "unauthorized_client") {
		t.Fatalf("rejected: %v", err)
	}
	p.up.Server.ClearFaults()
	p.up.Server.SetFault(sandboxFault(503))
	if _, err := h.Invoke(context.Background(), []byte(`{"provider":"demo-dot","scope":"admin"}`)); typeName(err) != "UpstreamUnavailable" || !strings.Contains(err.Error(), "retry_after") {
		t.Fatalf("unavailable: %v", err)
	}
}

func TestAPIGatewayAdapter(t *testing.T) {
	p := newParts(t)
	h := lambda.NewHandler(lambdafn.APIGateway(p.h))
	ev := events.APIGatewayV2HTTPRequest{RawPath: "/v1/tokens/demo-k2/rejected", Body: base64.StdEncoding.EncodeToString([]byte(`{"token_sha256":"` + strings.Repeat("0", 64) + `"}`)), IsBase64Encoded: true}
	ev.RequestContext.HTTP.Method = "POST"
	b, _ := json.Marshal(ev)
	out, err := h.Invoke(context.Background(), b)
	var resp events.APIGatewayV2HTTPResponse
	json.Unmarshal(out, &resp)
	if err != nil || resp.StatusCode != 200 || !strings.Contains(resp.Body, "access_token") || resp.Headers["Cache-Control"] != "no-store" {
		t.Fatalf("%v %+v", err, resp)
	}
	for _, bad := range []events.APIGatewayV2HTTPRequest{
		{RawPath: "/v1/tokens/demo-k2/rejected", Body: "%%%", IsBase64Encoded: true},
		{RawPath: "/v1/tokens/demo-k2/rejected", Body: strings.Repeat("a", 70000)},
	} {
		bad.RequestContext.HTTP.Method = "POST"
		b, _ := json.Marshal(bad)
		out, err := h.Invoke(context.Background(), b)
		json.Unmarshal(out, &resp)
		if err != nil || resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Fatalf("bad event: %v %+v", err, resp)
		}
	}
	// A malformed event is a function error, not a panic.
	if _, err := h.Invoke(context.Background(), []byte(`{"rawPath": 5}`)); err == nil {
		t.Fatal("malformed event accepted")
	}
	if p.up.Server.Stats().Total != 1 {
		t.Fatalf("provider requests %d", p.up.Server.Stats().Total)
	}
}

func TestRefresherEvents(t *testing.T) {
	p := newParts(t)
	p.v.Token(context.Background(), vend.Request{Provider: "demo-k2", MinTTL: -1})
	h := lambda.NewHandler(lambdafn.Refresh(p.v, 60_000_000_000, quiet))
	out, err := h.Invoke(context.Background(), []byte(`{"detail-type":"Scheduled Event","source":"aws.events","detail":{}}`))
	if err != nil || string(out) != `{"due":0,"refreshed":0,"failed":0,"skipped":0,"deferred":0,"retired":0,"lag_seconds":0}` {
		t.Fatalf("scheduled, nothing due: %s %v", out, err)
	}
	out, err = h.Invoke(context.Background(), []byte(`{"providers":["demo-k2"],"force":true}`))
	if err != nil || string(out) != `{"due":1,"refreshed":1,"failed":0,"skipped":0,"deferred":0,"retired":0,"lag_seconds":0}` {
		t.Fatalf("manual: %s %v", out, err)
	}
	// (Payloads that are not JSON at all never reach a handler: Lambda's Invoke API refuses them.)
	for _, bad := range []string{`{"providers":"demo-k2"}`, `{"force":true,"extra":1}`, `[]`, `"x"`} {
		if _, err := h.Invoke(context.Background(), []byte(bad)); typeName(err) != "InvalidRequest" {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func FuzzInvoke(f *testing.F) {
	p := newParts(f)
	h := lambda.NewHandler(lambdafn.Invoke(p.v, nil, quiet, nil))
	f.Add([]byte(`{"provider":"demo-k2","scope":"read","min_ttl":5}`))
	f.Add([]byte(`{"provider":"demo-k2","rejected_token_sha256":"` + strings.Repeat("a", 64) + `"}`))
	f.Fuzz(func(t *testing.T, ev []byte) {
		if !json.Valid(ev) {
			return // Lambda's Invoke API refuses payloads that are not JSON
		}
		_, err := h.Invoke(context.Background(), ev)
		if err != nil {
			switch typeName(err) {
			case "InvalidRequest", "ScopeNotAllowed", "InvalidTarget", "UnknownProvider", "UpstreamRejected", "UpstreamUnavailable":
			default:
				t.Fatalf("%q -> %T %v", ev, err, err)
			}
		}
	})
}
