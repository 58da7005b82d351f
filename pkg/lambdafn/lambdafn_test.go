package lambdafn_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"

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
	h := lambda.NewHandler(lambdafn.Refresh(p.v, 60_000_000_000, nil, quiet))
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

type recordingRefresher struct {
	mu   sync.Mutex
	runs []vend.RefreshOptions
}

func (r *recordingRefresher) RefreshDue(_ context.Context, o vend.RefreshOptions) (vend.RefreshResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.runs = append(r.runs, o)
	return vend.RefreshResult{Due: len(o.Shards)}, nil
}

type recordingDispatcher struct {
	mu     sync.Mutex
	events []string
	fail   map[int]bool
}

func (d *recordingDispatcher) Dispatch(_ context.Context, ev []byte) error {
	var e struct{ Shard int }
	json.Unmarshal(ev, &e)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.events = append(d.events, string(ev))
	if d.fail[e.Shard] {
		return errors.New("TooManyRequestsException")
	}
	return nil
}

// A fanned-out scheduled run reads nothing itself: it queues one event per
// shard, each renewed under its shard's lease by its own invocation; a
// shard it could not queue it renews itself.
func TestRefresherFansOutByShard(t *testing.T) {
	r, d := &recordingRefresher{}, &recordingDispatcher{}
	h := lambda.NewHandler(lambdafn.Refresh(r, time.Minute, d, quiet))
	ctx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{AwsRequestID: "req-1"})
	out, err := h.Invoke(ctx, []byte(`{"detail-type":"Scheduled Event","source":"aws.events","detail":{}}`))
	if err != nil || !strings.Contains(string(out), `"dispatched":8`) || len(r.runs) != 0 {
		t.Fatalf("scheduled: %s %v, %d runs of its own", out, err, len(r.runs))
	}
	slices.Sort(d.events)
	for sh, ev := range d.events {
		if want := fmt.Sprintf(`{"shard":%d,"run":"req-1"}`, sh); ev != want {
			t.Fatalf("event %d: %s, want %s", sh, ev, want)
		}
	}

	r, d = &recordingRefresher{}, &recordingDispatcher{fail: map[int]bool{2: true, 5: true}}
	h = lambda.NewHandler(lambdafn.Refresh(r, time.Minute, d, quiet))
	out, err = h.Invoke(ctx, []byte(`{"detail-type":"Scheduled Event","source":"aws.events","detail":{}}`))
	if err != nil || !strings.Contains(string(out), `"dispatched":6`) || len(r.runs) != 1 ||
		!slices.Equal(r.runs[0].Shards, []int{2, 5}) || !r.runs[0].Exclusive || r.runs[0].Horizon != time.Minute {
		t.Fatalf("two shards not queued: %s %v %+v", out, err, r.runs)
	}

	out, err = h.Invoke(ctx, []byte(`{"shard":3,"run":"req-1"}`))
	if err != nil || len(r.runs) != 2 || !slices.Equal(r.runs[1].Shards, []int{3}) || !r.runs[1].Exclusive || r.runs[1].Force {
		t.Fatalf("shard event: %s %v %+v", out, err, r.runs)
	}
	for _, bad := range []string{`{"shard":8}`, `{"shard":-1}`, `{"shard":"1"}`, `{"shard":null}`, `{"shard":1,"force":true}`} {
		if _, err := h.Invoke(ctx, []byte(bad)); typeName(err) != "InvalidRequest" {
			t.Errorf("%s: %v", bad, err)
		}
	}
	if len(r.runs) != 2 {
		t.Fatalf("a refused shard event ran: %+v", r.runs[2:])
	}

	// Without a dispatcher the scheduled run renews every shard itself, and
	// still under the shards' leases.
	r = &recordingRefresher{}
	h = lambda.NewHandler(lambdafn.Refresh(r, time.Minute, nil, quiet))
	if _, err := h.Invoke(ctx, []byte(`{"detail-type":"Scheduled Event","source":"aws.events","detail":{}}`)); err != nil || len(r.runs) != 1 || r.runs[0].Shards != nil || !r.runs[0].Exclusive {
		t.Fatalf("single run: %v %+v", err, r.runs)
	}
	// An operator's run takes its providers' shard leases too, so it never
	// renews a provider beside a scheduled run (the provider's cap and rate
	// bind every run together).
	r = &recordingRefresher{}
	h = lambda.NewHandler(lambdafn.Refresh(r, time.Minute, d, quiet))
	if _, err := h.Invoke(ctx, []byte(`{"providers":["demo-k2"],"force":true}`)); err != nil || len(r.runs) != 1 || !r.runs[0].Exclusive || !r.runs[0].Force {
		t.Fatalf("manual run: %v %+v", err, r.runs)
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

// FuzzRefreshEvent: whatever reaches the refresher (the schedule's event,
// a shard's, an operator's, or garbage) is run or refused as InvalidRequest;
// nothing panics, and a refused event runs nothing.
func FuzzRefreshEvent(f *testing.F) {
	f.Add([]byte(`{"detail-type":"Scheduled Event","source":"aws.events","detail":{}}`))
	f.Add([]byte(`{"shard":3,"run":"req-1"}`))
	f.Add([]byte(`{"providers":["demo-k2"],"force":true}`))
	f.Add([]byte(`{"shard":1e3}`))
	f.Fuzz(func(t *testing.T, ev []byte) {
		if !json.Valid(ev) {
			return // Lambda's Invoke API refuses payloads that are not JSON
		}
		r, d := &recordingRefresher{}, &recordingDispatcher{}
		h := lambda.NewHandler(lambdafn.Refresh(r, time.Minute, d, quiet))
		if _, err := h.Invoke(context.Background(), ev); err != nil {
			if typeName(err) != "InvalidRequest" {
				t.Fatalf("%q -> %T %v", ev, err, err)
			}
			if len(r.runs) != 0 || len(d.events) != 0 {
				t.Fatalf("%q refused, yet ran %+v and queued %v", ev, r.runs, d.events)
			}
			return
		}
		for _, o := range r.runs {
			for _, sh := range o.Shards {
				if sh < 0 || sh >= store.Shards {
					t.Fatalf("%q ran shard %d", ev, sh)
				}
			}
		}
	})
}
