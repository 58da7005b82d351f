package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
)

// captured is one request as the server saw it.
type captured struct {
	method, path, rawQuery, contentType, auth, body string
}

// recorder answers every request with status/body and records it.
type recorder struct {
	mu     sync.Mutex
	reqs   []captured
	status int
	body   string
	header map[string]string
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, captured{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), r.Header.Get("Authorization"), string(b)})
	status, body := rc.status, rc.body
	for k, v := range rc.header {
		w.Header().Set(k, v)
	}
	rc.mu.Unlock()
	if status == 0 {
		status = 200
	}
	if body == "" && status == 200 {
		body = `{"access_token":"tok-1","token_type":"bearer","expires_in":3600}`
	}
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func (rc *recorder) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.reqs)
}

func newDef(t *testing.T, tokenURL, method, secret string) *provider.Definition {
	t.Helper()
	d := &provider.Definition{Name: "p", TokenURL: tokenURL, RevokeURL: tokenURL + "/revoke", ClientID: "my client", ClientSecret: secret, AuthMethod: method}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	return d
}

func noSleep(context.Context, time.Duration) error { return nil }

func TestFetchClientSecretPostBody(t *testing.T) {
	rc := &recorder{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	d := newDef(t, srv.URL+"/oauth/token", provider.AuthPost, "s&cret=1")
	d.ExtraParams = map[string]string{"audience": "https://api"}
	c := &Client{}
	tok, err := c.Fetch(context.Background(), d, provider.Key{Scopes: []string{"read", "write"}})
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "tok-1" || tok.TokenType != "Bearer" {
		t.Fatalf("token %+v", tok)
	}
	got := rc.reqs[0]
	want := "audience=https%3A%2F%2Fapi&client_id=my+client&client_secret=s%26cret%3D1&grant_type=client_credentials&scope=read+write"
	if got.method != "POST" || got.path != "/oauth/token" || got.rawQuery != "" || got.auth != "" || got.body != want ||
		got.contentType != "application/x-www-form-urlencoded" {
		t.Fatalf("request %+v\nwant body %s", got, want)
	}
}

func TestFetchClientSecretBasicEncodesCredentials(t *testing.T) {
	secrets := []string{"p+a%s:s w/rd", "ünïcødé:秘密", "plain"}
	for _, secret := range secrets {
		rc := &recorder{}
		srv := httptest.NewServer(rc)
		d := newDef(t, srv.URL+"/o/token/", provider.AuthBasic, secret)
		if _, err := (&Client{}).Fetch(context.Background(), d, provider.Key{Scopes: []string{"read"}}); err != nil {
			t.Fatal(err)
		}
		srv.Close()
		got := rc.reqs[0]
		raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(got.auth, "Basic "))
		if err != nil || !strings.HasPrefix(got.auth, "Basic ") {
			t.Fatalf("Authorization %q", got.auth)
		}
		// The form-urlencoded id and secret joined by ':' (RFC 6749 §2.3.1).
		if string(raw) != url.QueryEscape("my client")+":"+url.QueryEscape(secret) {
			t.Fatalf("basic credential %q", raw)
		}
		id, sec, _ := strings.Cut(string(raw), ":")
		id, _ = url.QueryUnescape(id)
		sec, _ = url.QueryUnescape(sec)
		if id != "my client" || sec != secret {
			t.Fatalf("round trip: %q %q", id, sec)
		}
		if got.body != "grant_type=client_credentials&scope=read" || got.rawQuery != "" {
			t.Fatalf("credentials must travel only in the header: %+v", got)
		}
	}
}

func TestFetchQueryStyle(t *testing.T) {
	rc := &recorder{body: `{"access_token":"m-1","token_type":"Bearer"}`}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	d := newDef(t, srv.URL+"/token?tenant=7", provider.AuthQuery, "q s+cret")
	tok, err := (&Client{}).Fetch(context.Background(), d, provider.Key{})
	if err != nil {
		t.Fatal(err)
	}
	got := rc.reqs[0]
	q, _ := url.ParseQuery(got.rawQuery)
	if q.Get("client_id") != "my client" || q.Get("client_secret") != "q s+cret" || q.Get("grant_type") != "client_credentials" || q.Get("tenant") != "7" {
		t.Fatalf("query %q", got.rawQuery)
	}
	if got.method != "POST" || got.body != "" || got.auth != "" || got.contentType != "application/x-www-form-urlencoded" {
		t.Fatalf("request %+v", got)
	}
	if tok.Lifetime != time.Hour {
		t.Fatalf("no expires_in must mean default_expires_in, got %v", tok.Lifetime)
	}
}

func TestFetchAgainstSandboxEachStyle(t *testing.T) {
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	defs := sandbox.DemoProviders(sb, srv.URL)
	want := map[string]time.Duration{"demo-k2": time.Hour, "demo-mobi": time.Hour, "demo-dot": 36000 * time.Second}
	for name, life := range want {
		tok, err := (&Client{}).Fetch(context.Background(), defs[name], provider.Key{Scopes: []string{"read", "write"}[:1]})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if tok.Lifetime != life || !sb.Valid(tok.AccessToken) {
			t.Fatalf("%s: lifetime %v valid %v", name, tok.Lifetime, sb.Valid(tok.AccessToken))
		}
		if name == "demo-dot" && tok.Scope != "read" {
			t.Fatalf("dot scope echo: %q", tok.Scope)
		}
	}
	// The sandbox insists on each style's placement, so a wrong method fails.
	wrong := *defs["demo-k2"]
	wrong.AuthMethod = provider.AuthBasic
	_, err := (&Client{}).Fetch(context.Background(), &wrong, provider.Key{})
	if re, ok := AsRetrieveError(err); !ok || re.Code != "invalid_request" || re.Kind != Permanent {
		t.Fatalf("K2 with Basic: %v", err)
	}
}

func TestExpiresInRules(t *testing.T) {
	rules := ExpiryRules{DefaultExpiresIn: 1800, MaxCacheSeconds: 86400}
	cases := map[string]time.Duration{
		`3600`:        time.Hour,
		`"3600"`:      time.Hour,
		`" 120 "`:     2 * time.Minute,
		`3599.9`:      3599 * time.Second,
		`null`:        30 * time.Minute,
		``:            30 * time.Minute,
		`0`:           30 * time.Minute,
		`-10`:         30 * time.Minute,
		`"soon"`:      30 * time.Minute,
		`true`:        30 * time.Minute,
		`1e300`:       24 * time.Hour,
		`99999999999`: 24 * time.Hour,
		`0.5`:         30 * time.Minute,
	}
	for raw, want := range cases {
		body := `{"access_token":"a","token_type":"Bearer"`
		if raw != "" {
			body += `,"expires_in":` + raw
		}
		body += `,"unknown":{"x":[1,2]}}`
		issued := time.Unix(1_700_000_000, 0)
		tok, err := ParseTokenResponse("p", 200, http.Header{}, []byte(body), issued, "", rules, "")
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if tok.Lifetime != want || !tok.Expiry.Equal(issued.Add(want)) {
			t.Errorf("expires_in %s: lifetime %v expiry %v, want %v", raw, tok.Lifetime, tok.Expiry, want)
		}
	}
}

func TestParseSuccessFields(t *testing.T) {
	tok, err := ParseTokenResponse("p", 200, nil, []byte(`{"access_token":"a.b.c","token_type":"BEARER","scope":"read write","expires_in":36000}`), time.Now(), "read", ExpiryRules{}, "")
	if err != nil || tok.TokenType != "Bearer" || tok.Scope != "read write" {
		t.Fatalf("%+v %v", tok, err)
	}
	tok, err = ParseTokenResponse("p", 200, nil, []byte(`{"access_token":"a","token_type":"mac"}`), time.Now(), "read", ExpiryRules{}, "")
	if err != nil || tok.TokenType != "mac" || tok.Scope != "read" {
		t.Fatalf("non-bearer type kept, requested scope used: %+v %v", tok, err)
	}
}

func TestParseErrors(t *testing.T) {
	const secret = "hunter2-secret"
	cases := []struct {
		name   string
		status int
		header http.Header
		body   string
		kind   Kind
		code   string
		retry  time.Duration
	}{
		{"rfc error json", 400, nil, `{"error":"invalid_scope","error_description":"bad scope"}`, Permanent, "invalid_scope", 0},
		{"invalid client", 401, nil, `{"error":"invalid_client"}`, Permanent, "invalid_client", 0},
		{"mobi unauthorized", 401, nil, `{"error":"unauthorized_client"}`, Permanent, "unauthorized_client", 0},
		{"mobi invalid_grant 403", 403, nil, `{"error":"invalid_grant"}`, Permanent, "invalid_grant", 0},
		{"mobi 415", 415, nil, `{"error":"unsupported_grant_type"}`, Permanent, "unsupported_grant_type", 0},
		{"mobi 505", 505, nil, `{"error":"server_error"}`, Transient, "server_error", 0},
		{"status only 505", 505, nil, ``, Transient, "http_505", 0},
		{"status only 401", 401, nil, ``, Permanent, "invalid_client", 0},
		{"status only 400", 400, nil, `oops`, Permanent, "invalid_request", 0},
		{"html 502", 502, nil, `<html><body>Bad gateway</body></html>`, Transient, "http_502", 0},
		{"503 retry-after", 503, http.Header{"Retry-After": {"7"}}, ``, Transient, "http_503", 7 * time.Second},
		{"429", 429, http.Header{"Retry-After": {"30"}}, `{"error":"rate_limited"}`, RateLimited, "rate_limited", 30 * time.Second},
		{"429 bare", 429, nil, ``, RateLimited, "rate_limited", 0},
		{"temporarily unavailable", 400, nil, `{"error":"temporarily_unavailable"}`, Transient, "temporarily_unavailable", 0},
		{"200 garbage", 200, nil, `{"access_token": tok`, Transient, "invalid_response", 0},
		{"200 html", 200, nil, `<html>maintenance</html>`, Transient, "invalid_response", 0},
		{"200 empty", 200, nil, ``, Transient, "invalid_response", 0},
		{"200 no token type", 200, nil, `{"access_token":"x"}`, Transient, "invalid_response", 0},
		{"200 token not string", 200, nil, `{"access_token":5,"token_type":"Bearer"}`, Transient, "invalid_response", 0},
		{"200 token with space", 200, nil, `{"access_token":"a b","token_type":"Bearer"}`, Transient, "invalid_response", 0},
		{"302", 302, nil, ``, Permanent, "unexpected_redirect", 0},
		{"weird code", 400, nil, `{"error":"` + strings.Repeat("x", 100) + `"}`, Permanent, "invalid_request", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.header
			if h == nil {
				h = http.Header{}
			}
			_, err := ParseTokenResponse("p", tc.status, h, []byte(tc.body), time.Now(), "", ExpiryRules{}, secret)
			re, ok := AsRetrieveError(err)
			if !ok {
				t.Fatalf("want RetrieveError, got %v", err)
			}
			if re.Kind != tc.kind || re.Code != tc.code || re.RetryAfter != tc.retry || re.StatusCode != tc.status {
				t.Fatalf("got kind=%v code=%q retry=%v status=%d", re.Kind, re.Code, re.RetryAfter, re.StatusCode)
			}
		})
	}
}

func TestErrorRedactsEchoedSecret(t *testing.T) {
	const secret = "s3cr3t+value/x"
	body := `{"error":"invalid_client","error_description":"client_secret=` + url.QueryEscape(secret) + ` and ` + secret + ` rejected"}`
	_, err := ParseTokenResponse("p", 401, http.Header{}, []byte(body), time.Now(), "", ExpiryRules{}, secret)
	if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), url.QueryEscape(secret)) {
		t.Fatalf("secret leaked: %v", err)
	}
	if !strings.Contains(err.Error(), "[REDACTED]") {
		t.Fatalf("description dropped entirely: %v", err)
	}
}

func TestRetryAfterHTTPDate(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if d := ParseRetryAfter(now.Add(90*time.Second).Format(http.TimeFormat), now); d != 90*time.Second {
		t.Fatalf("http-date: %v", d)
	}
	if d := ParseRetryAfter("999999", now); d != time.Hour {
		t.Fatalf("cap: %v", d)
	}
	if d := ParseRetryAfter("-3", now); d != 0 {
		t.Fatalf("negative: %v", d)
	}
}

func TestBodyCappedAt1MiB(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"access_token":"`+strings.Repeat("a", MaxBodyBytes+10)+`","token_type":"Bearer"}`)
	}))
	defer srv.Close()
	c := &Client{MaxAttempts: 1}
	_, err := c.Fetch(context.Background(), newDef(t, srv.URL, provider.AuthPost, "x"), provider.Key{})
	re, ok := AsRetrieveError(err)
	if !ok || re.Code != "invalid_response" || !strings.Contains(re.Description, "1 MiB") {
		t.Fatalf("got %v", err)
	}
}

func TestRetriesTransientThenSucceeds(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= 2 {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, `{"access_token":"ok","token_type":"Bearer","expires_in":60}`)
	}))
	defer srv.Close()
	var waits []time.Duration
	c := &Client{BaseBackoff: 100 * time.Millisecond, Sleep: func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }}
	tok, err := c.Fetch(context.Background(), newDef(t, srv.URL, provider.AuthPost, "x"), provider.Key{})
	if err != nil || tok.AccessToken != "ok" || n.Load() != 3 {
		t.Fatalf("tok=%v err=%v requests=%d", tok, err, n.Load())
	}
	if len(waits) != 2 || waits[0] > 100*time.Millisecond || waits[1] > 200*time.Millisecond {
		t.Fatalf("full-jitter backoff bounds broken: %v", waits)
	}
}

func TestPermanentErrorsNeverRetried(t *testing.T) {
	for _, code := range []string{"invalid_client", "unauthorized_client", "invalid_request", "invalid_scope", "unsupported_grant_type", "invalid_grant"} {
		rc := &recorder{status: 400, body: `{"error":"` + code + `"}`}
		srv := httptest.NewServer(rc)
		_, err := (&Client{Sleep: noSleep}).Fetch(context.Background(), newDef(t, srv.URL, provider.AuthPost, "x"), provider.Key{})
		srv.Close()
		re, _ := AsRetrieveError(err)
		if rc.count() != 1 || re == nil || re.Code != code || re.Kind != Permanent {
			t.Errorf("%s: %d requests, err %v", code, rc.count(), err)
		}
	}
}

func TestRateLimitHonoursRetryAfter(t *testing.T) {
	rc := &recorder{status: 429, header: map[string]string{"Retry-After": "1"}}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	var waits []time.Duration
	c := &Client{MaxAttempts: 2, Sleep: func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }}
	_, err := c.Fetch(context.Background(), newDef(t, srv.URL, provider.AuthPost, "x"), provider.Key{})
	re, _ := AsRetrieveError(err)
	if rc.count() != 2 || len(waits) != 1 || waits[0] != time.Second || re == nil || re.Kind != RateLimited {
		t.Fatalf("requests %d waits %v err %v", rc.count(), waits, err)
	}
	// A Retry-After beyond MaxRetryAfter is handed back, not slept through.
	rc2 := &recorder{status: 429, header: map[string]string{"Retry-After": "30"}}
	srv2 := httptest.NewServer(rc2)
	defer srv2.Close()
	_, err = (&Client{Sleep: noSleep}).Fetch(context.Background(), newDef(t, srv2.URL, provider.AuthPost, "x"), provider.Key{})
	re, _ = AsRetrieveError(err)
	if rc2.count() != 1 || re == nil || re.RetryAfter != 30*time.Second {
		t.Fatalf("requests %d err %v", rc2.count(), err)
	}
	// MaxRetryAfter < 0: never wait on a 429 at all.
	rc3 := &recorder{status: 429}
	srv3 := httptest.NewServer(rc3)
	defer srv3.Close()
	_, _ = (&Client{Sleep: noSleep, MaxRetryAfter: -1}).Fetch(context.Background(), newDef(t, srv3.URL, provider.AuthPost, "x"), provider.Key{})
	if rc3.count() != 1 {
		t.Fatalf("want 1 request, got %d", rc3.count())
	}
}

func TestAttemptTimeoutAndDeadline(t *testing.T) {
	release := make(chan struct{})
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release) // runs before Close, which waits for handlers
	c := &Client{AttemptTimeout: 50 * time.Millisecond, MaxAttempts: 2, Sleep: noSleep}
	_, err := c.Fetch(context.Background(), newDef(t, srv.URL, provider.AuthPost, "x"), provider.Key{})
	re, _ := AsRetrieveError(err)
	if re == nil || re.Code != "timeout" || re.Kind != Transient || n.Load() != 2 {
		t.Fatalf("err %v requests %d", err, n.Load())
	}
	// The caller's deadline bounds everything, retries included.
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	c = &Client{AttemptTimeout: 5 * time.Second, MaxAttempts: 5}
	_, err = c.Fetch(ctx, newDef(t, srv.URL, provider.AuthPost, "x"), provider.Key{})
	if el := time.Since(start); el > 2*time.Second || err == nil {
		t.Fatalf("deadline ignored: %v after %v", err, el)
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	target := &recorder{}
	tsrv := httptest.NewServer(target)
	defer tsrv.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, tsrv.URL+"/steal", http.StatusFound)
	}))
	defer srv.Close()
	_, err := (&Client{}).Fetch(context.Background(), newDef(t, srv.URL, provider.AuthQuery, "x"), provider.Key{})
	re, _ := AsRetrieveError(err)
	if target.count() != 0 || re == nil || re.Kind != Permanent {
		t.Fatalf("redirect followed or misclassified: %v (target saw %d)", err, target.count())
	}
}

func TestNetworkErrorNeverCarriesQuerySecret(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close() // nothing listens now: connection refused
	const secret = "query-secret-canary"
	d := newDef(t, "http://"+addr+"/token", provider.AuthQuery, secret)
	_, err := (&Client{MaxAttempts: 2, Sleep: noSleep}).Fetch(context.Background(), d, provider.Key{})
	re, _ := AsRetrieveError(err)
	if re == nil || re.Kind != Transient || re.Code != "network_error" {
		t.Fatalf("got %v", err)
	}
	if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "client_secret") {
		t.Fatalf("error leaks the URL: %v", err)
	}
}

func TestEndpointMustBeHTTPS(t *testing.T) {
	d := &provider.Definition{Name: "p", TokenURL: "http://api.example.com/token", ClientID: "a", ClientSecret: "b", AuthMethod: provider.AuthPost}
	_, err := (&Client{}).Fetch(context.Background(), d, provider.Key{})
	re, _ := AsRetrieveError(err)
	if re == nil || re.Code != "invalid_endpoint" || re.Kind != Permanent {
		t.Fatalf("got %v", err)
	}
}

func TestBackoffFullJitter(t *testing.T) {
	c := &Client{BaseBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	seen := map[time.Duration]bool{}
	for n := 1; n <= 6; n++ {
		ceil := min(time.Second, 100*time.Millisecond<<(n-1))
		for i := 0; i < 200; i++ {
			d := c.backoff(n)
			if d < 0 || d > ceil {
				t.Fatalf("attempt %d: %v outside [0, %v]", n, d, ceil)
			}
			seen[d] = true
		}
	}
	if len(seen) < 100 {
		t.Fatalf("backoff is not jittered: %d distinct values", len(seen))
	}
}

func TestRevoke(t *testing.T) {
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	defs := sandbox.DemoProviders(sb, srv.URL)
	c := &Client{Sleep: noSleep}
	for _, name := range []string{"demo-k2", "demo-dot"} {
		tok, err := c.Fetch(context.Background(), defs[name], provider.Key{})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Revoke(context.Background(), defs[name], tok.AccessToken); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if sb.Valid(tok.AccessToken) {
			t.Fatalf("%s: token still valid after revoke", name)
		}
		// RFC 7009: an unknown token is still a 200.
		if err := c.Revoke(context.Background(), defs[name], "never-issued"); err != nil {
			t.Fatalf("%s unknown token: %v", name, err)
		}
	}
	if err := c.Revoke(context.Background(), defs["demo-mobi"], "x"); !errors.Is(err, ErrNoRevokeURL) {
		t.Fatalf("mobi has no revoke url: %v", err)
	}
	bad := *defs["demo-k2"]
	bad.ClientSecret = "wrong"
	err := c.Revoke(context.Background(), &bad, "x")
	if re, _ := AsRetrieveError(err); re == nil || re.Code != "invalid_client" {
		t.Fatalf("bad secret: %v", err)
	}
}

func TestRevokeRequestShape(t *testing.T) {
	rc := &recorder{body: `{}`}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	d := newDef(t, srv.URL+"/oauth", provider.AuthPost, "sec")
	if err := (&Client{}).Revoke(context.Background(), d, "the-token"); err != nil {
		t.Fatal(err)
	}
	got := rc.reqs[0]
	if got.path != "/oauth/revoke" || got.body != "client_id=my+client&client_secret=sec&token=the-token&token_type_hint=access_token" {
		t.Fatalf("revoke request %+v", got)
	}
}

func TestErrorCodeThatEchoesTheSecretIsDropped(t *testing.T) {
	const secret = "echoed-secret-123"
	_, err := ParseTokenResponse("p", 400, http.Header{}, []byte(`{"error":"`+secret+`"}`), time.Now(), "", ExpiryRules{}, secret)
	re, _ := AsRetrieveError(err)
	if re == nil || re.Code != "invalid_request" || strings.Contains(err.Error(), secret) {
		t.Fatalf("got %v", err)
	}
}

func TestRevokeErrorRedactsTheToken(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.WriteHeader(400)
		io.WriteString(w, `{"error":"invalid_request","error_description":"cannot revoke `+string(b)+`"}`)
	}))
	defer srv.Close()
	d := newDef(t, srv.URL, provider.AuthPost, "sec-xyz")
	err := (&Client{}).Revoke(context.Background(), d, "tok-to-revoke-42")
	if err == nil || strings.Contains(err.Error(), "tok-to-revoke-42") || strings.Contains(err.Error(), "sec-xyz") {
		t.Fatalf("revocation error leaks: %v", err)
	}
}

// A provider that echoes what it received (the Authorization header, the
// form, the query) must not get the client secret into our errors, in any
// encoding: HTTP Basic carries it as base64(url(id):url(secret)).
func TestEchoedCredentialsRedactedInEveryAuthStyle(t *testing.T) {
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	for name, def := range sandbox.DemoProviders(sb, srv.URL) {
		t.Run(name, func(t *testing.T) {
			sb.SetFault(sandbox.Fault{ClientID: def.ClientID, Body: "echo_auth", Times: 1})
			_, err := (&Client{}).Fetch(context.Background(), def, provider.Key{})
			re, ok := AsRetrieveError(err)
			if !ok || re.Code != "invalid_client" || !strings.Contains(re.Description, "[REDACTED]") {
				t.Fatalf("want a redacted invalid_client, got %v", err)
			}
			basic := base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(def.ClientID) + ":" + url.QueryEscape(def.ClientSecret)))
			for _, leak := range []string{def.ClientSecret, url.QueryEscape(def.ClientSecret), basic, strings.TrimRight(basic, "=")} {
				if strings.Contains(err.Error(), leak) {
					t.Fatalf("credential leaked in %q", err.Error())
				}
			}
		})
	}
}

// audiences records the audience each assertion was asked for.
type audiences struct{ got []string }

func (a *audiences) Assertion(_ context.Context, _ *provider.Definition, aud string) (string, error) {
	a.got = append(a.got, aud)
	return "signed.assertion.for-" + fmt.Sprint(len(a.got)), nil
}

// A revocation carries an assertion for the revocation endpoint, not one a
// revoke_url on another host could redeem at the token endpoint.
func TestRevokeAssertionAudienceIsTheRevocationEndpoint(t *testing.T) {
	rc := &recorder{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	d := &provider.Definition{Name: "jwt", TokenURL: srv.URL + "/token", RevokeURL: srv.URL + "/revoke", ClientID: "c",
		AuthMethod: provider.AuthPrivateKeyJWT, KMSKeyID: "alias/k"}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	a := &audiences{}
	c := &Client{Assertions: a}
	if _, err := c.Fetch(context.Background(), d, provider.Key{}); err != nil {
		t.Fatal(err)
	}
	rc.mu.Lock()
	rc.body = `{}`
	rc.mu.Unlock()
	if err := c.Revoke(context.Background(), d, "t"); err != nil {
		t.Fatal(err)
	}
	if len(a.got) != 2 || a.got[0] != "" || a.got[1] != d.RevokeURL {
		t.Fatalf("assertion audiences %q: want the token endpoint's default, then %s", a.got, d.RevokeURL)
	}
}

// forgetful records Forget calls.
type forgetful struct {
	audiences
	forgot int
}

func (f *forgetful) Forget(*provider.Definition) { f.forgot++ }

// invalid_client for a KMS-signed client drops the cached key, so a
// re-pointed alias is resolved again by the next assertion.
func TestInvalidClientForgetsTheKMSKey(t *testing.T) {
	rc := &recorder{status: 401, body: `{"error":"invalid_client"}`}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	d := &provider.Definition{Name: "jwt", TokenURL: srv.URL + "/token", ClientID: "c", AuthMethod: provider.AuthPrivateKeyJWT, KMSKeyID: "alias/k"}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	f := &forgetful{}
	if _, err := (&Client{Assertions: f}).Fetch(context.Background(), d, provider.Key{}); err == nil || f.forgot != 1 {
		t.Fatalf("err %v, forgot %d", err, f.forgot)
	}
}
