package extension

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/localcache"
)

// fakeVend answers like the vend function: a new token per fetch, or an error.
type fakeVend struct {
	calls atomic.Int32
	err   error
	delay time.Duration
	life  int64
}

func (f *fakeVend) Fetch(_ context.Context, r client.Request) (*client.Token, error) {
	n := f.calls.Add(1)
	time.Sleep(f.delay)
	if f.err != nil {
		return nil, f.err
	}
	life := f.life
	if life == 0 {
		life = 3600
	}
	return &client.Token{Provider: r.Provider, AccessToken: "tok-" + string(rune('A'+n)), TokenType: "Bearer", ExpiresIn: life,
		ExpiresAt: time.Now().Add(time.Duration(life) * time.Second).UTC().Format(time.RFC3339), Scope: r.Scope}, nil
}

const secret = "session-token"

func do(h http.Handler, method, target, body, header string) (*httptest.ResponseRecorder, map[string]any) {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if header != "" {
		req.Header.Set(Header, header)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var m map[string]any
	json.Unmarshal(rec.Body.Bytes(), &m)
	return rec, m
}

func TestConcurrentCallersShareOneFetch(t *testing.T) {
	f := &fakeVend{delay: 50 * time.Millisecond}
	h := New(f, secret, nil).Handler()
	var wg sync.WaitGroup
	tokens := make(chan string, 50)
	for i := 0; i < 50; i++ {
		wg.Go(func() {
			rec, m := do(h, "GET", "/v1/tokens/k2?scope=write%20read", "", secret)
			if rec.Code != 200 {
				t.Errorf("%d %v", rec.Code, m)
				return
			}
			tokens <- m["access_token"].(string)
		})
	}
	wg.Wait()
	close(tokens)
	seen := map[string]bool{}
	for tk := range tokens {
		seen[tk] = true
	}
	if f.calls.Load() != 1 || len(seen) != 1 {
		t.Fatalf("50 concurrent callers: %d fetches, %d distinct tokens", f.calls.Load(), len(seen))
	}
	// The same scope set in another order is the same key.
	if rec, _ := do(h, "GET", "/v1/tokens/k2?scope=read+write", "", secret); rec.Code != 200 || f.calls.Load() != 1 {
		t.Fatalf("normalized scope: %d, %d fetches", rec.Code, f.calls.Load())
	}
}

func TestRequestsWithoutTheSessionTokenAreRefused(t *testing.T) {
	f := &fakeVend{}
	h := New(f, secret, nil).Handler()
	for _, hdr := range []string{"", "wrong", secret + "x", strings.ToUpper(secret)} {
		rec, m := do(h, "GET", "/v1/tokens/k2", "", hdr)
		if rec.Code != 401 || m["error"] != "unauthorized" || strings.Contains(rec.Body.String(), secret) {
			t.Fatalf("header %q: %d %v", hdr, rec.Code, m)
		}
	}
	// With no session token configured, nothing is ever served.
	if rec, _ := do(New(f, "", nil).Handler(), "GET", "/v1/tokens/k2", "", ""); rec.Code != 401 {
		t.Fatalf("empty secret: %d", rec.Code)
	}
	if f.calls.Load() != 0 {
		t.Fatal("a refused request fetched")
	}
}

func TestBadInputAndRelayedErrors(t *testing.T) {
	f := &fakeVend{}
	h := New(f, secret, nil).Handler()
	for _, c := range []struct {
		method, target, body string
		status               int
		code                 string
	}{
		{"GET", "/v1/tokens/k2?min_ttl=-1", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/k2?min_ttl=86401", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/k2?tenant=x", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/k2?scope=a&scope=b", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/UPPER", "", 404, "unknown_provider"},
		{"POST", "/v1/tokens/k2/rejected", `{"token_sha256":"xyz"}`, 400, "invalid_request"},
		{"POST", "/v1/tokens/k2/rejected", `{"token_sha256":"` + strings.Repeat("a", 64) + `","x":1}`, 400, "invalid_request"},
		{"POST", "/v1/tokens/k2/rejected", `{{{`, 400, "invalid_request"},
	} {
		rec, m := do(h, c.method, c.target, c.body, secret)
		if rec.Code != c.status || m["error"] != c.code || rec.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("%s %s: %d %v", c.method, c.target, rec.Code, m)
		}
	}
	if f.calls.Load() != 0 {
		t.Fatal("bad input fetched")
	}
	// The vend function's errors keep their status, code and Retry-After.
	f.err = &client.Error{Code: "UpstreamUnavailable", Message: "provider k2: no usable token (retry_after=7s)"}
	rec, m := do(h, "GET", "/v1/tokens/k2", "", secret)
	if rec.Code != 503 || m["error"] != "upstream_unavailable" || rec.Header().Get("Retry-After") != "7" {
		t.Fatalf("relayed unavailable: %d %v %q", rec.Code, m, rec.Header().Get("Retry-After"))
	}
	f.err = &client.Error{Code: "ScopeNotAllowed", Message: "scope not allowed"}
	if rec, m := do(h, "GET", "/v1/tokens/k2?scope=admin", "", secret); rec.Code != 403 || m["error"] != "scope_not_allowed" {
		t.Fatalf("relayed refusal: %d %v", rec.Code, m)
	}
	f.err = context.DeadlineExceeded // the Invoke API itself failed
	if rec, m := do(h, "GET", "/v1/tokens/k2", "", secret); rec.Code != 503 || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("invoke failure: %d %v", rec.Code, m)
	}
}

func TestRenewDueRenewsOnlyWhatIsDue(t *testing.T) {
	f := &fakeVend{life: 100}
	now := time.Now()
	c := newWith(f, secret, localcache.Options{Now: func() time.Time { return now }})
	if _, _, err := c.Token(context.Background(), "k2", "", time.Second); err != nil {
		t.Fatal(err)
	}
	if n := c.RenewDue(context.Background()); n != 0 || f.calls.Load() != 1 {
		t.Fatalf("a fresh token renewed: %d", n)
	}
	now = now.Add(61 * time.Second) // past expiry − max(60 s, life/5), capped at half the life
	if n := c.RenewDue(context.Background()); n != 1 || f.calls.Load() != 2 {
		t.Fatalf("a due token: renewed %d, %d fetches", n, f.calls.Load())
	}
}
