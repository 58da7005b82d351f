package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/extension"
)

func TestLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:2790": true, "[::1]:2790": true, "localhost:2790": true, "127.0.0.2:1": true,
		"0.0.0.0:2790": false, ":2790": false, "[::]:2790": false, "10.0.0.5:2790": false, "169.254.170.2:80": false,
		"example.com:2790": false, "127.0.0.1": false, "127.0.0.1:": false,
	} {
		if err := Loopback(addr); (err == nil) != ok {
			t.Errorf("Loopback(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
	// Run refuses too, before listening.
	c := extension.New(nil, "a-token-of-enough-length", nil)
	if err := Run(context.Background(), Config{Addr: "0.0.0.0:0", Token: "a-token-of-enough-length", Cache: c}); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("Run on 0.0.0.0: %v", err)
	}
}

func TestLoadToken(t *testing.T) {
	dir := t.TempDir()
	if tok, err := LoadToken("  0123456789abcdef  ", ""); err != nil || tok != "0123456789abcdef" {
		t.Fatalf("value: %q %v", tok, err)
	}
	for _, bad := range []struct{ v, f, want string }{
		{"", "", "no agent token"}, {"short", "", "at least 16"}, {"0123456789abcdef", filepath.Join(dir, "x"), "not both"},
		{"", filepath.Join(dir, "missing-dir", "token"), "agent token file"},
	} {
		if _, err := LoadToken(bad.v, bad.f); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("LoadToken(%q, %q) = %v, want %q", bad.v, bad.f, err, bad.want)
		}
	}
	// A missing file is created with a random token, read back as is later.
	f := filepath.Join(dir, "token")
	first, err := LoadToken("", f)
	if err != nil || len(first) != 64 {
		t.Fatalf("created: %q %v", first, err)
	}
	if again, err := LoadToken("", f); err != nil || again != first {
		t.Fatalf("read back %q %v, want %q", again, err, first)
	}
	other := filepath.Join(dir, "other")
	if second, _ := LoadToken("", other); second == first {
		t.Fatal("two files got the same token")
	}
	// Concurrent agents on one new file agree on one token.
	racy := filepath.Join(dir, "racy")
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Go(func() { got[i], _ = LoadToken("", racy) })
	}
	wg.Wait()
	b, _ := os.ReadFile(racy)
	for _, g := range got {
		if g != strings.TrimSpace(string(b)) {
			t.Fatalf("racing agents got %q, the file holds %q", got, b)
		}
	}
}

type fetcher struct{ n int }

func (f *fetcher) Fetch(ctx context.Context, r client.Request) (*client.Token, error) {
	f.n++
	exp := time.Now().Add(time.Hour)
	return &client.Token{Provider: r.Provider, AccessToken: "tok", TokenType: "Bearer", ExpiresIn: 3600,
		ExpiresAt: exp.UTC().Format(time.RFC3339), IssuedAt: time.Now().UTC().Format(time.RFC3339)}, nil
}

func TestHandlerNeedsTheAgentToken(t *testing.T) {
	const tok = "agent-token-0123456789"
	f := &fetcher{}
	srv := httptest.NewServer(Handler(tok, extension.New(f, tok, nil)))
	defer srv.Close()
	do := func(method, path string, h map[string]string) (int, map[string]any) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s %s: Cache-Control %q", method, path, resp.Header.Get("Cache-Control"))
		}
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	if code, body := do("GET", "/healthz", nil); code != 200 || body["status"] != "ok" {
		t.Fatalf("health: %d %v", code, body)
	}
	for name, h := range map[string]map[string]string{
		"none":  nil,
		"wrong": {Header: "agent-token-0123456788"},
		// The extension's header with the right value is not the agent's.
		"extension header": {extension.Header: tok},
		"prefix":           {Header: tok[:10]},
	} {
		if code, body := do("GET", "/v1/tokens/demo?scope=read", h); code != 401 || body["error"] != "unauthorized" || body["access_token"] != nil {
			t.Errorf("%s: %d %v", name, code, body)
		}
	}
	if f.n != 0 {
		t.Fatalf("refused requests fetched %d tokens", f.n)
	}
	if code, body := do("GET", "/v1/tokens/demo?scope=read", map[string]string{Header: tok}); code != 200 || body["access_token"] != "tok" {
		t.Fatalf("with the token: %d %v", code, body)
	}
	// The extension's contract: its errors, unchanged.
	if code, body := do("GET", "/v1/tokens/demo?min_ttl=x", map[string]string{Header: tok}); code != 400 || body["error"] != "invalid_request" {
		t.Fatalf("bad min_ttl: %d %v", code, body)
	}
}
