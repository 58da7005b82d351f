package sandbox

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func post(t *testing.T, u string, body string, basic ...string) (int, map[string]any, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if len(basic) == 2 {
		req.SetBasicAuth(url.QueryEscape(basic[0]), url.QueryEscape(basic[1]))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m, resp.Header
}

func setup(t *testing.T) (*Server, string) {
	s := New()
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	DemoProviders(s, srv.URL)
	return s, srv.URL
}

func TestK2Style(t *testing.T) {
	s, base := setup(t)
	st, m, h := post(t, base+K2TokenPath, "client_id=demo-k2-client&client_secret=demo-k2-secret&grant_type=client_credentials")
	if st != 200 || m["expires_in"].(float64) != 3600 || m["token_type"] != "Bearer" || h.Get("Cache-Control") != "no-store" {
		t.Fatalf("%d %v", st, m)
	}
	if _, has := m["refresh_token"]; has {
		t.Fatal("K2 issues no refresh token")
	}
	// Credentials anywhere but the body are refused.
	if st, m, _ := post(t, base+K2TokenPath, "grant_type=client_credentials", "demo-k2-client", "demo-k2-secret"); st != 400 || m["error"] != "invalid_request" {
		t.Fatalf("basic on K2: %d %v", st, m)
	}
	if st, m, _ := post(t, base+K2TokenPath, "client_id=demo-k2-client&client_secret=nope&grant_type=client_credentials"); st != 401 || m["error"] != "invalid_client" {
		t.Fatalf("wrong secret: %d %v", st, m)
	}
	if got := s.Requests("demo-k2-client"); got != 3 {
		t.Fatalf("requests counted %d", got)
	}
}

func TestMobiStyle(t *testing.T) {
	_, base := setup(t)
	q := "?client_id=demo-mobi-client&client_secret=demo-mobi-secret&grant_type=client_credentials"
	st, m, _ := post(t, base+MobiTokenPath+q, "")
	if st != 200 || m["access_token"] == nil || m["token_type"] != "Bearer" {
		t.Fatalf("%d %v", st, m)
	}
	if _, has := m["expires_in"]; has {
		t.Fatal("mobi sends no expires_in")
	}
	if st, _, _ := post(t, base+MobiTokenPath+q, "scope=x"); st != 400 {
		t.Fatalf("non-empty body accepted: %d", st)
	}
	if st, m, _ := post(t, base+MobiTokenPath+strings.Replace(q, "client_credentials", "password", 1), ""); st != 415 || m["error"] != "unsupported_grant_type" {
		t.Fatalf("grant: %d %v", st, m)
	}
	if st, m, _ := post(t, base+MobiTokenPath+strings.Replace(q, "demo-mobi-secret", "x", 1), ""); st != 401 || m["error"] != "unauthorized_client" {
		t.Fatalf("secret: %d %v", st, m)
	}
}

func TestDOTStyle(t *testing.T) {
	_, base := setup(t)
	st, m, _ := post(t, base+DOTTokenPath, "grant_type=client_credentials&scope=read+write", "demo-dot-client", "demo-dot-secret")
	if st != 200 || m["scope"] != "read write" || m["expires_in"].(float64) != 36000 {
		t.Fatalf("basic: %d %v", st, m)
	}
	st, m, _ = post(t, base+DOTTokenPath, "grant_type=client_credentials&client_id=demo-dot-client&client_secret=demo-dot-secret&scope=admin")
	if st != 200 || m["scope"] != "admin" {
		t.Fatalf("body: %d %v", st, m)
	}
	if st, m, _ := post(t, base+DOTTokenPath, "grant_type=client_credentials&client_secret=demo-dot-secret", "demo-dot-client", "demo-dot-secret"); st != 400 || m["error"] != "invalid_request" {
		t.Fatalf("two auth methods: %d %v", st, m)
	}
	if st, m, _ := post(t, base+DOTTokenPath, "grant_type=client_credentials&scope=payments", "demo-dot-client", "demo-dot-secret"); st != 400 || m["error"] != "invalid_scope" {
		t.Fatalf("scope: %d %v", st, m)
	}
	if st, m, _ := post(t, base+DOTTokenPath, "grant_type=client_credentials", "demo-dot-client", "bad"); st != 401 || m["error"] != "invalid_client" {
		t.Fatalf("secret: %d %v", st, m)
	}
}

func TestRotationRejectsOldSecret(t *testing.T) {
	s, base := setup(t)
	if err := s.Rotate("demo-k2-client", "new-secret"); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := post(t, base+K2TokenPath, "client_id=demo-k2-client&client_secret=demo-k2-secret&grant_type=client_credentials"); st != 401 {
		t.Fatalf("old secret accepted: %d", st)
	}
	if st, _, _ := post(t, base+K2TokenPath, "client_id=demo-k2-client&client_secret=new-secret&grant_type=client_credentials"); st != 200 {
		t.Fatalf("new secret refused: %d", st)
	}
}

func TestRevokeOnIssueAndResource(t *testing.T) {
	s, base := setup(t)
	s.AddClient(Client{ID: "one", Secret: "s", Style: K2, RevokeOnIssue: true})
	_, m1, _ := post(t, base+K2TokenPath, "client_id=one&client_secret=s&grant_type=client_credentials")
	first := m1["access_token"].(string)
	if !s.Valid(first) {
		t.Fatal("fresh token invalid")
	}
	req, _ := http.NewRequest("GET", base+ResourcePath, nil)
	req.Header.Set("Authorization", "Bearer "+first)
	if resp, _ := http.DefaultClient.Do(req); resp.StatusCode != 200 {
		t.Fatalf("resource refused a live token: %d", resp.StatusCode)
	}
	post(t, base+K2TokenPath, "client_id=one&client_secret=s&grant_type=client_credentials")
	if s.Valid(first) {
		t.Fatal("earlier token survived RevokeOnIssue")
	}
	if resp, _ := http.DefaultClient.Do(req); resp.StatusCode != 401 {
		t.Fatalf("resource accepted a revoked token: %d", resp.StatusCode)
	}
}

func TestFaultsOverControlAPI(t *testing.T) {
	s, base := setup(t)
	ctl := func(method, path, body string) int {
		req, _ := http.NewRequest(method, base+controlPrefix+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	k2 := "client_id=demo-k2-client&client_secret=demo-k2-secret&grant_type=client_credentials"
	if ctl("POST", "faults", `{"status":429,"retry_after":7,"times":1}`) != 204 {
		t.Fatal("fault not accepted")
	}
	st, m, h := post(t, base+K2TokenPath, k2)
	if st != 429 || h.Get("Retry-After") != "7" || m["error"] != "rate_limited" {
		t.Fatalf("429 fault: %d %v %v", st, m, h)
	}
	if st, _, _ := post(t, base+K2TokenPath, k2); st != 200 {
		t.Fatalf("fault with times=1 lasted: %d", st)
	}
	ctl("POST", "faults", `{"status":505,"client_id":"demo-mobi-client"}`)
	if st, _, _ := post(t, base+K2TokenPath, k2); st != 200 {
		t.Fatal("fault for another client applied")
	}
	q := "?client_id=demo-mobi-client&client_secret=demo-mobi-secret&grant_type=client_credentials"
	if st, m, _ := post(t, base+MobiTokenPath+q, ""); st != 505 || m["error"] != "server_error" {
		t.Fatalf("505: %d %v", st, m)
	}
	ctl("DELETE", "faults", "")
	ctl("POST", "faults", `{"body":"html","times":1}`)
	req, _ := http.NewRequest("POST", base+K2TokenPath, strings.NewReader(k2))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, _ := http.DefaultClient.Do(req)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html" {
		t.Fatalf("html fault: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if ctl("POST", "rotate", `{"client_id":"demo-k2-client","new_secret":"n"}`) != 204 {
		t.Fatal("rotate")
	}
	if st, _, _ := post(t, base+K2TokenPath, k2); st != 401 {
		t.Fatal("rotated secret still accepted")
	}
	if ctl("POST", "faults", `{"bogus":1}`) != 400 {
		t.Fatal("unknown fault field accepted")
	}
	if s.Stats().Total < 6 {
		t.Fatalf("stats %+v", s.Stats())
	}
}

// The control API adds a federated client (no secret), which refuses a
// request that carries no assertion.
func TestControlFederatedClient(t *testing.T) {
	s := New()
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	body := `{"client_id":"entra-app","style":"k2","federated":{"issuer":"http://127.0.0.1:1","subject":"arn:aws:iam::123456789012:role/r","audience":"api://AzureADTokenExchange"}}`
	resp, err := http.Post(srv.URL+"/_sandbox/clients", "application/json", strings.NewReader(body))
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("add federated client: %v %v", err, resp.Status)
	}
	resp, err = http.PostForm(srv.URL+K2TokenPath, url.Values{"grant_type": {"client_credentials"}, "client_id": {"entra-app"}})
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no assertion: %v %v", err, resp.Status)
	}
}
