package dpop

import (
	"bytes"
	"encoding/json"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// TestDocsDefinitions: the provider definitions in docs/dpop.md are valid
// (the FAPI 2.0 one passes the profile), the invoke event is one the vend
// function accepts, and the Go example parses and uses the client's API.
func TestDocsDefinitions(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	page, err := os.ReadFile(filepath.Join(root, "docs", "dpop.md"))
	if err != nil {
		t.Fatal(err)
	}
	var defs, events int
	for _, m := range regexp.MustCompile("(?s)```json\n(.*?)```").FindAllSubmatch(page, -1) {
		block := m[1]
		switch {
		case bytes.Contains(block, []byte(`"token_url"`)):
			d, err := provider.Parse("bank", block)
			if err != nil {
				t.Errorf("docs/dpop.md definition refused: %v\n%s", err, block)
				continue
			}
			if !d.UsesDPoP() {
				t.Errorf("docs/dpop.md definition without a DPoP key:\n%s", block)
			}
			defs++
		case bytes.Contains(block, []byte(`"dpop_htm"`)):
			var ev lambdafn.InvokeEvent
			dec := json.NewDecoder(bytes.NewReader(block))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&ev); err != nil || ev.DPoPHTM == "" || ev.DPoPHTU == "" {
				t.Errorf("docs/dpop.md invoke event: %v\n%s", err, block)
			}
			events++
		}
	}
	if defs != 2 || events != 1 {
		t.Fatalf("docs/dpop.md: %d definitions and %d invoke events checked, want 2 and 1", defs, events)
	}
	goBlocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllSubmatch(page, -1)
	if len(goBlocks) != 1 {
		t.Fatalf("want one Go example, got %d", len(goBlocks))
	}
	src := string(goBlocks[0][1])
	if _, err := parser.ParseFile(token.NewFileSet(), "example.go", src, 0); err != nil {
		t.Fatalf("the Go example does not parse: %v", err)
	}
	// The API it names exists with these shapes (this compiles only if so).
	var c *client.Client
	_ = func() { c.DPoPTransport(nil, client.Request{Provider: "bank", Scope: "payments"}) }
	_ = client.NewLambdaInvokerFromConfig
	for _, use := range []string{"client.New(client.NewLambdaInvokerFromConfig(", "c.DPoPTransport(nil, client.Request{"} {
		if !strings.Contains(src, use) {
			t.Errorf("the Go example no longer shows %q", use)
		}
	}
}
