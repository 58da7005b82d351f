package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"golang.org/x/oauth2"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

type world struct {
	up     *vendtest.Upstream
	v      *vend.Vendor
	api    *httptest.Server
	calls  atomic.Int32
	signed atomic.Int32
}

func newWorld(t *testing.T) *world {
	w := &world{up: vendtest.NewUpstream(t)}
	provs := registry.NewStatic(w.up.Defs)
	w.v = vend.New(provs, vendtest.Client(nil), store.NewMemory(nil), vend.Options{})
	h := httpapi.New(w.v, provs, nil, nil)
	w.api = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.calls.Add(1)
		auth := r.Header.Get("Authorization")
		if strings.HasPrefix(auth, "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/") && strings.Contains(auth, "/eu-west-1/execute-api/aws4_request") && r.Header.Get("X-Amz-Date") != "" {
			w.signed.Add(1)
		}
		h.ServeHTTP(rw, r)
	}))
	t.Cleanup(w.api.Close)
	return w
}

var creds = credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", "")

func TestHTTPClientCachesSignsAndSharesFetches(t *testing.T) {
	w := newWorld(t)
	c := client.New(client.NewHTTPFetcher(w.api.URL, creds, "eu-west-1"))
	var wg sync.WaitGroup
	toks := make([]string, 50)
	for i := range toks {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			tok, err := c.Token(context.Background(), "demo-dot", "read write")
			if err != nil {
				t.Error(err)
				return
			}
			toks[i] = tok.AccessToken
		}(i)
	}
	wg.Wait()
	for _, tk := range toks {
		if tk != toks[0] || tk == "" {
			t.Fatal("callers got different tokens")
		}
	}
	if w.calls.Load() != 1 || w.signed.Load() != 1 {
		t.Fatalf("vendor calls %d (signed %d), want 1", w.calls.Load(), w.signed.Load())
	}
	_, err := c.Token(context.Background(), "nope", "")
	var ve *client.Error
	if !errors.As(err, &ve) || ve.Status != 404 || ve.Code != "unknown_provider" {
		t.Fatalf("unknown provider: %v", err)
	}
}

func TestTokenSourceAndRoundTripperRetryOn401(t *testing.T) {
	w := newWorld(t)
	c := client.New(client.NewHTTPFetcher(w.api.URL, nil, ""))
	resource := w.up.URL + sandbox.ResourcePath

	hc := oauth2.NewClient(context.Background(), c.TokenSource(context.Background(), "demo-k2", ""))
	resp, err := hc.Get(resource)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("oauth2 client: %v %v", err, resp)
	}
	resp.Body.Close()

	rt := &http.Client{Transport: c.Transport(nil, "demo-k2", "")}
	tok, _ := c.Token(context.Background(), "demo-k2", "")
	w.up.Server.RevokeToken(tok.AccessToken) // the provider revoked it behind the vendor's back
	resp, err = rt.Get(resource)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after 401 the transport should retry with a new token: %v %v", err, resp)
	}
	resp.Body.Close()
	fresh, _ := c.Token(context.Background(), "demo-k2", "")
	if fresh.AccessToken == tok.AccessToken || !w.up.Server.Valid(fresh.AccessToken) {
		t.Fatal("client still holds the rejected token")
	}
	if n := w.up.Server.Requests("demo-k2-client"); n != 2 {
		t.Fatalf("upstream requests %d, want 2", n)
	}
}

// fakeLambda behaves like the Lambda Invoke API in front of the real handler:
// a handler error becomes FunctionError "Unhandled" with the runtime's
// {"errorMessage","errorType"} payload.
type fakeLambda struct{ h lambda.Handler }

func (f fakeLambda) Invoke(ctx context.Context, in *awslambda.InvokeInput, _ ...func(*awslambda.Options)) (*awslambda.InvokeOutput, error) {
	out, err := f.h.Invoke(ctx, in.Payload)
	if err != nil {
		p, _ := json.Marshal(map[string]string{"errorMessage": err.Error(), "errorType": wire.ErrorType(err)})
		return &awslambda.InvokeOutput{StatusCode: 200, FunctionError: aws.String("Unhandled"), Payload: p}, nil
	}
	return &awslambda.InvokeOutput{StatusCode: 200, Payload: out}, nil
}

func TestLambdaInvokerAgainstTheHandler(t *testing.T) {
	w := newWorld(t)
	fl := fakeLambda{h: lambda.NewHandler(lambdafn.Invoke(w.v, nil, quietLog(), nil))}
	c := client.New(client.NewLambdaInvoker(fl, "token-vendor-VendFunction"))
	tok, err := c.Token(context.Background(), "demo-mobi", "")
	if err != nil || !w.up.Server.Valid(tok.AccessToken) || tok.TokenType != "Bearer" {
		t.Fatalf("%v %v", tok, err)
	}
	again, _ := c.Token(context.Background(), "demo-mobi", "")
	if s := c.Stats(); again != tok || s.Fetches != 1 || s.Hits != 1 {
		t.Fatalf("not cached in-process: %+v", s)
	}
	fresh, err := c.Rejected(context.Background(), "demo-mobi", "", tok.AccessToken)
	if err != nil || fresh.AccessToken == tok.AccessToken {
		t.Fatalf("rejected via invoke: %v", err)
	}
	_, err = c.Token(context.Background(), "demo-dot", "payments")
	var ve *client.Error
	if !errors.As(err, &ve) || ve.Code != "ScopeNotAllowed" {
		t.Fatalf("typed error: %v", err)
	}
}

// A target (resource, audience) goes through the HTTP API and direct invoke
// into the vendor's key and to the provider; a value not allowed is a typed
// refusal naming it.
func TestTargetThroughAPIAndInvoke(t *testing.T) {
	up := vendtest.NewUpstream(t)
	def := *up.Defs["demo-k2"]
	def.AllowedResources, def.AllowedAudiences = []string{"https://api.example/a", "https://api.example/b"}, []string{"ledger"}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	up.Defs["demo-k2"] = &def
	provs := registry.NewStatic(up.Defs)
	v := vend.New(provs, vendtest.Client(nil), store.NewMemory(nil), vend.Options{})
	api := httptest.NewServer(httpapi.New(v, provs, nil, nil))
	defer api.Close()
	viaAPI := client.New(client.NewHTTPFetcher(api.URL, nil, ""))
	viaInvoke := client.New(client.NewLambdaInvoker(fakeLambda{h: lambda.NewHandler(lambdafn.Invoke(v, nil, quietLog(), nil))}, "vend"))
	a, err := viaAPI.TokenFor(context.Background(), client.Request{Provider: "demo-k2", Resource: "https://api.example/a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := viaInvoke.TokenFor(context.Background(), client.Request{Provider: "demo-k2", Resource: "https://api.example/b", Audience: "ledger"})
	if err != nil || b.AccessToken == a.AccessToken {
		t.Fatalf("another target via invoke: %v", err)
	}
	same, _ := viaInvoke.TokenFor(context.Background(), client.Request{Provider: "demo-k2", Resource: "https://api.example/a"})
	if same.AccessToken != a.AccessToken {
		t.Fatal("the same target through another path is another token")
	}
	if got := up.Server.Targets("demo-k2-client"); len(got) != 2 || got[1] != "resource=https://api.example/b audience=ledger" {
		t.Fatalf("targets at the provider: %q", got)
	}
	for _, c := range []*client.Client{viaAPI, viaInvoke} {
		_, err := c.TokenFor(context.Background(), client.Request{Provider: "demo-k2", Audience: "admin"})
		var ve *client.Error
		if !errors.As(err, &ve) || (ve.Code != "invalid_target" && ve.Code != "InvalidTarget") || !strings.Contains(ve.Message, `"admin"`) {
			t.Fatalf("audience not allowed: %v", err)
		}
	}
}
