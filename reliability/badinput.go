package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// badRow is one bad input and the answer it got.
type badRow struct {
	Entry, Input, Got, Want string
	Pass                    bool
}

func errType(err error) string {
	if err == nil {
		return "no error"
	}
	return wire.ErrorType(err)
}

func short(s string) string { return cell(s, 70) }

// cell makes s one Markdown table cell of at most n bytes.
func cell(s string, n int) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n", `\n`)
	if len(s) > n {
		return s[:n-3] + "…"
	}
	return s
}

// badInputs runs every entry point's bad inputs; it also checks nothing
// reached the provider and nothing was cached.
func badInputs() ([]badRow, error) {
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	defs := sandbox.DemoProviders(sb, srv.URL)
	mem := store.NewMemory(nil)
	provs := registry.NewStatic(defs)
	v := vend.New(provs, &upstream.Client{}, mem, vend.Options{})
	h := httpapi.New(v, provs, nil, nil)
	var rows []badRow
	add := func(entry, input, got, want string) {
		rows = append(rows, badRow{Entry: entry, Input: short(input), Got: got, Want: want, Pass: got == want})
	}
	for _, c := range []struct{ method, target, body, want string }{
		{"GET", "/v1/tokens/demo-dot?scope=read%22write", "", "400 invalid_request"},
		{"GET", "/v1/tokens/demo-dot?scope=read%0Awrite", "", "400 invalid_request"},
		{"GET", "/v1/tokens/demo-dot?scope=" + strings.Repeat("a", 2000), "", "400 invalid_request"},
		{"GET", "/v1/tokens/demo-dot?scope=payments", "", "403 scope_not_allowed"},
		{"GET", "/v1/tokens/demo-dot?min_ttl=-1", "", "400 invalid_request"},
		{"GET", "/v1/tokens/demo-dot?min_ttl=86401", "", "400 invalid_request"},
		{"GET", "/v1/tokens/demo-dot?min_ttl=ten", "", "400 invalid_request"},
		{"GET", "/v1/tokens/demo-dot?scope=a&scope=b", "", "400 invalid_request"},
		{"GET", "/v1/tokens/demo-dot?tenant=x", "", "400 invalid_request"},
		{"GET", "/v1/tokens/demo-dot?audience=x", "", "403 invalid_target"},
		{"GET", "/v1/tokens/demo-dot?resource=not-a-uri", "", "400 invalid_request"},
		{"GET", "/v1/tokens/../../etc/passwd", "", "404 not_found"},
		{"GET", "/v1/tokens/NoSuch", "", "404 unknown_provider"},
		{"POST", "/v1/tokens/demo-k2/rejected", "", "400 invalid_request"},
		{"POST", "/v1/tokens/demo-k2/rejected", `{"token_sha256":"xyz"}`, "400 invalid_request"},
		{"POST", "/v1/tokens/demo-k2/rejected", `{"token_sha256":"` + strings.Repeat("a", 64) + `","more":1}`, "400 invalid_request"},
		{"POST", "/v1/tokens/demo-k2/rejected", strings.Repeat("{", 5000), "400 invalid_request"},
		{"DELETE", "/v1/tokens/demo-k2", "", "405 method_not_allowed"},
		{"GET", "/v2/anything", "", "404 not_found"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, c.target, strings.NewReader(c.body)))
		var body map[string]any
		json.Unmarshal(rec.Body.Bytes(), &body)
		add("HTTP API", c.method+" "+c.target+" "+c.body, fmt.Sprintf("%d %v", rec.Code, body["error"]), c.want)
	}
	inv := lambda.NewHandler(lambdafn.Invoke(v, nil, quietLog(), nil))
	for _, c := range []struct{ ev, want string }{
		{`{"scope":"read"}`, "InvalidRequest"},
		{`{"provider":"demo-k2","scopes":"read"}`, "InvalidRequest"},
		{`{"provider":"demo-k2","min_ttl":"60"}`, "InvalidRequest"},
		{`{"provider":"demo-k2","min_ttl":-60}`, "InvalidRequest"},
		{`{"provider":"demo-k2","rejected_token_sha256":"00"}`, "InvalidRequest"},
		{`{"provider":"demo-dot","scope":"payments"}`, "ScopeNotAllowed"},
		{`{"provider":"missing"}`, "UnknownProvider"},
		{`[]`, "InvalidRequest"},
		{`"demo-k2"`, "InvalidRequest"},
	} {
		_, err := inv.Invoke(context.Background(), []byte(c.ev))
		add("direct invoke", c.ev, errType(err), c.want)
	}
	ref := lambda.NewHandler(lambdafn.Refresh(v, time.Minute, nil, quietLog()))
	for _, c := range []struct{ ev, want string }{
		{`{"providers":"demo-k2"}`, "InvalidRequest"},
		{`{"force":"yes"}`, "InvalidRequest"},
		{`{"providers":["demo-k2"],"force":true,"x":1}`, "InvalidRequest"},
		{`{"detail-type":"Scheduled Event","source":"aws.events","detail":{}}`, "no error"},
		{`{"shard":8}`, "InvalidRequest"},
		{`{"shard":"0"}`, "InvalidRequest"},
		{`{"shard":0,"providers":["demo-k2"]}`, "InvalidRequest"},
	} {
		_, err := ref.Invoke(context.Background(), []byte(c.ev))
		add("refresher event", c.ev, errType(err), c.want)
	}
	for _, c := range []struct{ def, want string }{
		{`{"client_id":"a","client_secret":"SECRET"}`, "token_url: required"},
		{`{"token_url":"http://api.example.com/t","client_id":"a","client_secret":"SECRET"}`, "token_url: must use https (http is allowed only for loopback hosts)"},
		{`{"token_url":"https://x.example/t","client_id":"a"}`, "client_secret: required"},
		{`{"token_url":"https://x.example/t","client_id":"a","client_secret":"SECRET","auth_method":"jwt"}`, "auth_method: must be one of client_secret_basic, client_secret_post, query, client_secret_jwt, private_key_jwt, aws_web_identity, tls_client_auth, self_signed_tls_client_auth"},
		{`{"token_url":"https://x.example/t","client_id":"a","client_secret":"SECRET","scopes":["a b"]}`, "scopes: each scope must be a non-empty RFC 6749 scope-token (no spaces, quotes or backslashes)"},
		{`{"token_url":"https://x.example/t","client_id":"a","client_secret":"SECRET","client_secert":"x"}`, "client_secert: unknown field"},
		{`{"token_url":"https://x.example/t","client_id":"a","auth_method":"private_key_jwt"}`, "kms_key_id: private_key_jwt needs kms_key_id (an asymmetric KMS key) or private_key (PEM)"},
		{`{"token_url":"https://x.example/t","client_id":"a","auth_method":"private_key_jwt","private_key":"SECRET"}`, "private_key: must be a PEM private key (PKCS #8, PKCS #1 or SEC 1)"},
		{`{"token_url":"https://x.example/t","client_id":"a","auth_method":"private_key_jwt","kms_key_id":"alias/k","client_secret":"SECRET"}`, "client_secret: not used with private_key_jwt; remove it"},
		{`{"token_url":"https://x.example/t","client_id":"a","auth_method":"tls_client_auth","client_certificate":"x","client_key":"SECRET"}`, "client_certificate: certificate and client_key do not form a usable pair"},
		{`{"token_url":"https://x.example/t","client_id":"a","client_secret":"SECRET" oops}`, ": not valid JSON (syntax error at byte 77)"},
	} {
		_, err := provider.Parse("p", []byte(c.def))
		var fe *provider.FieldError
		got := fmt.Sprint(err)
		if errors.As(err, &fe) {
			got = fe.Field + ": " + fe.Reason
		}
		if strings.Contains(fmt.Sprint(err), "SECRET") {
			got += " (LEAKS THE SECRET)"
		}
		add("provider definition", c.def, got, c.want)
	}
	for _, c := range []struct {
		status int
		body   string
		want   string
	}{
		{200, `<html>maintenance</html>`, "transient invalid_response"},
		{200, `{"access_token":"a"}`, "transient invalid_response"},
		{200, ``, "transient invalid_response"},
		{505, ``, "transient http_505"},
		{429, ``, "rate_limited rate_limited"},
		{401, `{"error":"unauthorized_client"}`, "permanent unauthorized_client"},
		{403, `{"error":"invalid_grant"}`, "permanent invalid_grant"},
		{415, `{"error":"unsupported_grant_type"}`, "permanent unsupported_grant_type"},
		{400, `{"error":"` + strings.Repeat("x", 200) + `"}`, "permanent invalid_request"},
	} {
		_, err := upstream.ParseTokenResponse("p", c.status, http.Header{}, []byte(c.body), time.Now(), "", upstream.ExpiryRules{}, "s3cr3t-value")
		got := "no error"
		if re, ok := upstream.AsRetrieveError(err); ok {
			got = re.Kind.String() + " " + re.Code
		}
		add("provider response", fmt.Sprintf("%d %s", c.status, c.body), got, c.want)
	}
	cli, err := cliRows()
	if err != nil {
		return nil, err
	}
	rows = append(rows, cli...)
	// Tokens and the records that gate them; the scheduled run's shard
	// leases are not a cache.
	all, _ := mem.Scan(context.Background(), store.Filter{})
	var items []*store.Item
	for _, it := range all {
		if !strings.HasPrefix(it.PK, "shard#") {
			items = append(items, it)
		}
	}
	reached := sb.Stats().Total
	rows = append(rows, badRow{Entry: "all of the above", Input: "records cached, provider requests",
		Got: fmt.Sprintf("%d cached, %d requests", len(items), reached), Want: "0 cached, 0 requests", Pass: len(items) == 0 && reached == 0})
	return rows, nil
}

func cliRows() ([]badRow, error) {
	dir, err := os.MkdirTemp("", "rel-cli-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "tokenvendor")
	root, _ := testenv.RepoRoot()
	build := exec.Command("go", "build", "-o", bin, "./cmd/tokenvendor")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build: %v\n%s", err, out)
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"k2":{"token_url":"http://x.example/t","client_id":"a","client_secret":"SECRET"}}`), 0o600)
	var rows []badRow
	for _, args := range [][]string{
		{"serve", "--bogus"}, {"serve", "stray"}, {"serve", "--providers", filepath.Join(dir, "none.json")},
		{"serve", "--providers", bad}, {"token"}, {"token", "demo-k2", "--min-ttl", "-3"}, {"frobnicate"}, {"sandbox", "--addr"},
	} {
		cmd := exec.Command(bin, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		lines := len(strings.Split(strings.TrimSpace(stderr.String()), "\n"))
		got := fmt.Sprintf("exit %d, %d line", code, lines)
		if strings.Contains(stderr.String(), "SECRET") {
			got += " (LEAKS THE SECRET)"
		}
		rows = append(rows, badRow{Entry: "CLI", Input: "tokenvendor " + strings.Join(args, " "), Got: got + ": " + short(strings.TrimSpace(stderr.String())), Want: "exit 2, 1 line"})
		last := &rows[len(rows)-1]
		last.Pass = strings.HasPrefix(last.Got, last.Want)
	}
	return rows, nil
}

// fuzzRow is one fuzz target's bounded run.
type fuzzRow struct {
	Target, Pkg string
	Time        time.Duration
	Result      string
	Pass        bool
}

var fuzzTargets = [][2]string{
	{"./pkg/provider", "FuzzParse"},
	{"./pkg/upstream", "FuzzParseTokenResponse"},
	{"./pkg/httpapi", "FuzzHandler"},
	{"./pkg/lambdafn", "FuzzInvoke"},
	{"./pkg/lambdafn", "FuzzRefreshEvent"},
	{"./pkg/identity", "FuzzProof"},
	{"./pkg/principal", "FuzzMatch"},
	{"./pkg/principal", "FuzzGlob"},
	{"./pkg/provider", "FuzzKeyInjective"},
}

// fuzzFailure is what says why a fuzz run failed: the lines after the
// progress lines (a failing test, a crasher's file, the fuzzer's own
// error), not the progress.
func fuzzFailure(out string) string {
	var keep []string
	for line := range strings.Lines(out) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "fuzz: elapsed:") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, " / ")
}

// fuzz runs each target for d; a crasher is written by go test into the
// package's testdata/fuzz, where it stays as a regression test.
func fuzz(d time.Duration) []fuzzRow {
	root, _ := testenv.RepoRoot()
	var rows []fuzzRow
	for _, t := range fuzzTargets {
		cmd := exec.Command("go", "test", "-run", "^$", "-fuzz", "^"+t[1]+"$", "-fuzztime", d.String(), t[0])
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		res := "no failure"
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "execs:") {
				res = strings.TrimSpace(line[strings.Index(line, "execs:"):])
			}
		}
		if err != nil {
			res = "FAILED: " + cell(fuzzFailure(string(out)), 600)
		}
		rows = append(rows, fuzzRow{Target: t[1], Pkg: t[0], Time: d, Result: res, Pass: err == nil})
	}
	return rows
}
