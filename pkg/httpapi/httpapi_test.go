package httpapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

type env struct {
	h    http.Handler
	up   *vendtest.Upstream
	st   *store.Memory
	logs *bytes.Buffer
}

func newEnv(t testing.TB) *env {
	up := vendtest.NewUpstream(t)
	st := store.NewMemory(nil)
	provs := registry.NewStatic(up.Defs)
	logs := &bytes.Buffer{}
	log := slogJSON(logs)
	v := vend.New(provs, vendtest.Client(nil), st, vend.Options{Logger: log})
	return &env{h: httpapi.New(v, provs, log, nil), up: up, st: st, logs: logs}
}

func (e *env) do(method, target, body string) (*http.Response, map[string]any) {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	resp := rec.Result()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &m)
	return resp, m
}

func TestRoutesHappyPath(t *testing.T) {
	e := newEnv(t)
	resp, tok := e.do("GET", "/v1/tokens/demo-dot?scope=read%20write&min_ttl=120", "")
	if resp.StatusCode != 200 || tok["provider"] != "demo-dot" || tok["scope"] != "read write" || tok["token_type"] != "Bearer" {
		t.Fatalf("%d %v", resp.StatusCode, tok)
	}
	if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Pragma") != "no-cache" || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("headers %v", resp.Header)
	}
	if exp := tok["expires_in"].(float64); exp < 35990 || exp > 36000 {
		t.Fatalf("expires_in %v", exp)
	}
	at, err := time.Parse(time.RFC3339, tok["expires_at"].(string))
	if err != nil || at.Location() != time.UTC {
		t.Fatalf("expires_at %v", tok["expires_at"])
	}
	_, again := e.do("GET", "/v1/tokens/demo-dot?scope=read%20write", "")
	if again["access_token"] != tok["access_token"] {
		t.Fatal("second GET not served from cache")
	}
	_, fresh := e.do("POST", "/v1/tokens/demo-dot/refresh?scope=read%20write", "")
	if fresh["access_token"] == tok["access_token"] || fresh["access_token"] == nil {
		t.Fatal("refresh did not fetch a new token")
	}
	sum := sha256.Sum256([]byte(fresh["access_token"].(string)))
	_, other := e.do("POST", "/v1/tokens/demo-dot/rejected?scope=read%20write", `{"token_sha256":"`+hex.EncodeToString(sum[:])+`"}`)
	if other["access_token"] == fresh["access_token"] || other["access_token"] == nil {
		t.Fatal("rejected returned the rejected token")
	}
	resp, _ = e.do("POST", "/v1/tokens/demo-dot/revoke?scope=read%20write", "")
	if resp.StatusCode != 204 || resp.Header.Get("X-Upstream-Revoked") != "true" {
		t.Fatalf("revoke %d %v", resp.StatusCode, resp.Header)
	}
	if e.up.Server.Valid(other["access_token"].(string)) {
		t.Fatal("revoked token still valid upstream")
	}
	resp, list := e.do("GET", "/v1/providers", "")
	if resp.StatusCode != 200 || len(list["providers"].([]any)) != 3 {
		t.Fatalf("providers %v", list)
	}
	resp, h := e.do("GET", "/healthz", "")
	if resp.StatusCode != 200 || h["status"] != "ok" {
		t.Fatal("healthz")
	}
}

func TestProvidersListingHasNoSecretsOrTokens(t *testing.T) {
	e := newEnv(t)
	_, tok := e.do("GET", "/v1/tokens/demo-k2", "")
	e.do("GET", "/v1/tokens/demo-mobi", "")
	req := httptest.NewRequest("GET", "/v1/providers", nil)
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	body := rec.Body.String()
	for _, s := range []string{"demo-k2-secret", "demo-mobi-secret", "demo-dot-secret", tok["access_token"].(string), "demo-k2-client"} {
		if strings.Contains(body, s) {
			t.Fatalf("listing contains %q: %s", s, body)
		}
	}
	var m struct {
		Providers []struct {
			Name, TokenURL, AuthMethod string
			Tokens                     []map[string]any
		}
	}
	json.Unmarshal([]byte(body), &m)
	for _, p := range m.Providers {
		if p.Name == "demo-k2" && (len(p.Tokens) != 1 || p.Tokens[0]["expires_at"] == nil || p.Tokens[0]["refresh_at"] == nil) {
			t.Fatalf("demo-k2 tokens %v", p.Tokens)
		}
		if strings.Contains(p.TokenURL, "?") {
			t.Fatal("token_url query not redacted")
		}
	}
	if strings.Contains(e.logs.String(), tok["access_token"].(string)) {
		t.Fatal("token in logs")
	}
}

func TestBadInputGetsDocumentedErrorAndCachesNothing(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		method, target, body string
		status               int
		code                 string
	}{
		{"GET", "/v1/tokens/demo-dot?scope=read%22write", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?scope=read%0Awrite", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?scope=" + strings.Repeat("a", 2000), "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?scope=read%20payments", "", 403, "scope_not_allowed"},
		{"GET", "/v1/tokens/demo-dot?min_ttl=-1", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?min_ttl=abc", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?min_ttl=86401", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?min_ttl=1.5", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?scope=read&scope=write", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?tenant=x", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?audience=x", "", 403, "invalid_target"},
		{"GET", "/v1/tokens/demo-dot?resource=relative/path", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/demo-dot?%zz", "", 400, "invalid_request"},
		{"GET", "/v1/tokens/nope", "", 404, "unknown_provider"},
		{"GET", "/v1/tokens/UPPER", "", 404, "unknown_provider"},
		// IAM authorized the route as written; decoded it would name another provider.
		{"GET", "/v1/tokens/demo%2Ddot", "", 400, "invalid_request"},
		{"POST", "/v1/tokens/demo%2Dk2/revoke", "", 400, "invalid_request"},
		{"POST", "/v1/tokens/demo-k2/revoke?min_ttl=5", "", 400, "invalid_request"},
		{"POST", "/v1/tokens/demo-k2/rejected", ``, 400, "invalid_request"},
		{"POST", "/v1/tokens/demo-k2/rejected", `{"token_sha256":`, 400, "invalid_request"},
		{"POST", "/v1/tokens/demo-k2/rejected", `{"token_sha256":"abc"}`, 400, "invalid_request"},
		{"POST", "/v1/tokens/demo-k2/rejected", `{"token_sha256":"` + strings.Repeat("g", 64) + `"}`, 400, "invalid_request"},
		{"POST", "/v1/tokens/demo-k2/rejected", `{"token_sha256":"` + strings.Repeat("a", 64) + `","x":1}`, 400, "invalid_request"},
		{"POST", "/v1/tokens/demo-k2/rejected", `{"token_sha256":"` + strings.Repeat("a", 64) + `"} {}`, 400, "invalid_request"},
		{"POST", "/v1/tokens/demo-k2/rejected", strings.Repeat(" ", 5000) + "{}", 400, "invalid_request"},
		{"GET", "/v1/providers?x=1", "", 400, "invalid_request"},
		{"GET", "/v1/providers?limit=0", "", 400, "invalid_request"},
		{"GET", "/v1/providers?limit=1001", "", 400, "invalid_request"},
		{"GET", "/v1/providers?cursor=not!base64", "", 400, "invalid_request"},
		{"GET", "/v1/providers?cursor=Zm9vI3g", "", 400, "invalid_request"}, // "foo#x": no record this API pages over
		{"GET", "/v1/tokens/demo-k2/extra", "", 404, "not_found"},
		{"GET", "/v2/tokens/demo-k2", "", 404, "not_found"},
		{"DELETE", "/v1/tokens/demo-k2", "", 405, "method_not_allowed"},
		{"GET", "/v1/tokens/demo-k2/refresh", "", 405, "method_not_allowed"},
	}
	for _, c := range cases {
		resp, body := e.do(c.method, c.target, c.body)
		if resp.StatusCode != c.status || body["error"] != c.code || body["error_description"] == "" {
			t.Errorf("%s %s: %d %v", c.method, c.target, resp.StatusCode, body)
		}
		if resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s %s: no Cache-Control", c.method, c.target)
		}
	}
	if n := e.up.Server.Stats().Total; n != 0 {
		t.Fatalf("bad input reached the provider %d times", n)
	}
	if items, _ := e.st.Scan(context.Background(), store.Filter{}); len(items) != 0 {
		t.Fatalf("bad input cached %d records", len(items))
	}
}

func TestUpstreamErrorsMapToStatuses(t *testing.T) {
	e := newEnv(t)
	e.up.Server.SetFault(sandbox.Fault{Status: 401, ClientID: "demo-k2-client"})
	resp, body := e.do("GET", "/v1/tokens/demo-k2", "")
	if resp.StatusCode != 502 || body["error"] != "upstream_rejected" || body["upstream_error"] != "invalid_client" || body["provider"] != "demo-k2" {
		t.Fatalf("502: %d %v", resp.StatusCode, body)
	}
	e.up.Server.ClearFaults()
	e.up.Server.SetFault(sandbox.Fault{Status: 503, RetryAfter: 7, ClientID: "demo-mobi-client"})
	resp, body = e.do("GET", "/v1/tokens/demo-mobi", "")
	if resp.StatusCode != 503 || body["error"] != "upstream_unavailable" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("503: %d %v %v", resp.StatusCode, body, resp.Header)
	}
	if strings.Contains(body["error_description"].(string), "demo-mobi-secret") {
		t.Fatal("secret in error body")
	}
}

func FuzzHandler(f *testing.F) {
	e := newEnv(f)
	f.Add("GET", "/v1/tokens/demo-k2?scope=read&min_ttl=10", "")
	f.Add("POST", "/v1/tokens/demo-k2/rejected", `{"token_sha256":"00"}`)
	f.Add("GET", "/v1/providers", "")
	f.Fuzz(func(t *testing.T, method, target, body string) {
		req, err := http.NewRequest(method, "http://x"+target, strings.NewReader(body))
		if err != nil || !strings.HasPrefix(target, "/") {
			return
		}
		rec := httptest.NewRecorder()
		e.h.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != 502 && rec.Code != 503 {
			t.Fatalf("%s %s -> %d %s", method, target, rec.Code, rec.Body)
		}
		if rec.Header().Get("Cache-Control") != "no-store" {
			t.Fatal("no Cache-Control")
		}
	})
}

// The listing looks at a bounded number of records per page and continues
// with next_cursor until every key was listed once.
func TestProvidersListingPages(t *testing.T) {
	e := newEnv(t)
	want := map[string]bool{}
	for i := 0; i < 7; i++ {
		scope := fmt.Sprintf("s%d", i)
		if resp, _ := e.do("GET", "/v1/tokens/demo-k2?scope="+scope, ""); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
		want[scope] = true
	}
	// The records the scan passes over include keys#, cooldown# and shard# ones; a
	// page that ends on one (limit 1 makes sure) still gives a usable cursor.
	e.st.Put(context.Background(), &store.Item{PK: "cooldown#demo-k2", Provider: "demo-k2", Version: 1, ExpiresAt: time.Now().Add(time.Hour).Unix()}, 0)
	e.st.Put(context.Background(), &store.Item{PK: "shard#3", Version: 1, LeaseOwner: "run"}, 0) // a refresher shard's lease
	for _, limit := range []int{3, 1} {
		seen, pages, cursor := map[string]bool{}, 0, ""
		for {
			target := fmt.Sprintf("/v1/providers?limit=%d", limit)
			if cursor != "" {
				target += "&cursor=" + cursor
			}
			resp, body := e.do("GET", target, "")
			if resp.StatusCode != 200 {
				t.Fatalf("%s: %d %v", target, resp.StatusCode, body)
			}
			pages++
			n := 0
			for _, p := range body["providers"].([]any) {
				for _, tk := range p.(map[string]any)["tokens"].([]any) {
					s := tk.(map[string]any)["scope"].(string)
					if seen[s] {
						t.Fatalf("key %s listed twice", s)
					}
					seen[s] = true
					n++
				}
			}
			if n > limit {
				t.Fatalf("page of %d keys with limit %d", n, limit)
			}
			next, _ := body["next_cursor"].(string)
			if next == "" {
				break
			}
			cursor = next
			if pages > 20 {
				t.Fatal("listing does not end")
			}
		}
		if len(seen) != len(want) || pages < 3 {
			t.Fatalf("listed %v in %d pages, want %d keys", seen, pages, len(want))
		}
	}
}

type fakeKeys struct{}

func (fakeKeys) JWKS(context.Context, *provider.Definition) ([]byte, error) {
	return []byte(`{"keys":[{"kty":"EC","kid":"k1"}]}`), nil
}

// The JWKS route answers only for private_key_jwt providers, cacheably.
func TestJWKSRoute(t *testing.T) {
	e := newEnv(t)
	h := e.h.(*httpapi.Handler).WithJWKS(fakeKeys{})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/providers/demo-k2/jwks.json", nil))
	if rec.Code != 404 || strings.Contains(rec.Body.String(), "keys") {
		t.Fatalf("a client_secret provider: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/providers/nope/jwks.json", nil))
	if rec.Code != 404 || rec.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("unknown provider: %d %v", rec.Code, rec.Header())
	}
}

// TestJWKSOneAnswerForEveryUnservedName: the route needs no IAM, so it must
// not tell a provider that signs nothing from a name that is no provider.
func TestJWKSOneAnswerForEveryUnservedName(t *testing.T) {
	e := newEnv(t)
	h := e.h.(*httpapi.Handler).WithJWKS(fakeKeys{})
	answer := func(name string) string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/providers/"+name+"/jwks.json", nil))
		return fmt.Sprintf("%d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	known, unknown := answer("demo-k2"), answer("no-such-provider")
	if !strings.HasPrefix(known, "404 ") || known != strings.ReplaceAll(unknown, "no-such-provider", "demo-k2") {
		t.Fatalf("a provider that signs nothing and an unknown name are told apart:\n%s\n%s", known, unknown)
	}
	if strings.Contains(known, "demo-k2") {
		t.Fatalf("the answer names the provider: %s", known)
	}
}

// TestProvidersListingCursorIsOpaque: a cursor tells nothing about the
// record a page ended on (any provider's, or a key-count record), and an
// altered one is refused as invalid_request.
func TestProvidersListingCursorIsOpaque(t *testing.T) {
	e := newEnv(t)
	for i := range 4 {
		if resp, _ := e.do("GET", fmt.Sprintf("/v1/tokens/demo-k2?scope=s%d", i), ""); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
	}
	cursor := ""
	for page := 0; ; page++ {
		target := "/v1/providers?limit=1"
		if cursor != "" {
			target += "&cursor=" + cursor
		}
		resp, body := e.do("GET", target, "")
		if resp.StatusCode != 200 {
			t.Fatalf("%d %v", resp.StatusCode, body)
		}
		next, _ := body["next_cursor"].(string)
		if next == "" {
			break
		}
		for _, enc := range []func(string) ([]byte, error){base64.RawURLEncoding.DecodeString, base64.StdEncoding.DecodeString, base64.URLEncoding.DecodeString} {
			if b, err := enc(next); err == nil {
				for _, leak := range []string{"token#", "keys#", "demo-k2", "cooldown#"} {
					if strings.Contains(string(b), leak) {
						t.Fatalf("cursor %q decodes to %q: names a record", next, b)
					}
				}
			}
		}
		if page == 1 {
			raw, _ := base64.RawURLEncoding.DecodeString(next)
			raw[len(raw)-1] ^= 1
			tampered := base64.RawURLEncoding.EncodeToString(raw)
			for _, bad := range []string{tampered, base64.RawURLEncoding.EncodeToString([]byte("keys#demo-k2")), "x"} {
				if resp, body := e.do("GET", "/v1/providers?limit=1&cursor="+bad, ""); resp.StatusCode != 400 || body["error"] != "invalid_request" {
					t.Fatalf("cursor %q: %d %v", bad, resp.StatusCode, body)
				}
			}
		}
		cursor = next
		if page > 20 {
			t.Fatal("listing does not end")
		}
	}
}
