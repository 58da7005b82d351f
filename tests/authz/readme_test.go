package authz

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// toMoto sends requests for the real STS endpoint to moto, Host header
// unchanged, so moto checks the signature made for sts.us-east-1.amazonaws.com.
type toMoto struct{ target *url.URL }

func (m toMoto) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host = m.target.Scheme, m.target.Host
	return http.DefaultTransport.RoundTrip(r)
}

func readmeBlock(t *testing.T, lang, marker string) string {
	t.Helper()
	if blocks := testenv.DocBlocks(t, lang, marker); len(blocks) > 0 {
		return blocks[0]
	}
	t.Fatalf("the docs (README.md, docs/*.md) have no %s block with %q", lang, marker)
	return ""
}

var npmOnce sync.Once

// readmeFunction is the vend function the README's examples invoke: its ARN
// is the vendor id.
const readmeFunction = "arn:aws:lambda:us-east-1:123456789012:function:token-vendor-VendFunction-XXXX"

// TestREADMECallerPatterns: every allowed_callers example in the docs
// (README.md and docs/*.md) loads as a provider definition (a wildcard
// pattern with a path would be refused), and the wildcard example is there.
func TestREADMECallerPatterns(t *testing.T) {
	blocks := testenv.DocBlocks(t, "json", `"allowed_callers"`)
	wildcard := false
	for _, def := range blocks {
		if !strings.Contains(def, `"token_url"`) {
			continue // a fragment, not a whole definition
		}
		d, err := provider.Parse("kopokopo", []byte(def))
		if err != nil {
			t.Fatalf("a docs allowed_callers example does not load: %v\n%s", err, def)
		}
		if len(d.AllowedCallers) == 0 {
			t.Fatalf("example without callers:\n%s", def)
		}
		wildcard = wildcard || strings.Contains(def, "role/payouts-*")
	}
	if !wildcard {
		t.Fatalf("no docs example shows the wildcard pattern role/payouts-* (%d examples)", len(blocks))
	}
}

// TestREADMEProofSnippets runs the README's boto3 and AWS SDK for
// JavaScript snippets as written, with an assumed role's credentials, and
// has the vendor's verifier check their proofs with STS (moto, signatures
// enforced): both must prove that role's session.
func TestREADMEProofSnippets(t *testing.T) {
	m := testenv.StartAuthMoto(t)
	_, creds := m.Role(t, "/", "readme-caller", "docs")
	target, _ := url.Parse(m.Endpoint)
	v := &identity.Verifier{Endpoint: "https://sts.us-east-1.amazonaws.com/", VendorID: readmeFunction,
		HTTP: &http.Client{Transport: toMoto{target}}}
	env := append(os.Environ(), "AWS_ACCESS_KEY_ID="+creds.AccessKeyID, "AWS_SECRET_ACCESS_KEY="+creds.SecretAccessKey,
		"AWS_SESSION_TOKEN="+creds.SessionToken, "AWS_REGION=us-east-1", "HOME="+t.TempDir(), "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null")
	check := func(lang string, out []byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s snippet: %v\n%s", lang, err, out)
		}
		var p identity.Proof
		if err := json.Unmarshal(out, &p); err != nil {
			t.Fatalf("%s snippet printed %s", lang, out)
		}
		c := v.Verify(context.Background(), &p)
		if c.ARN != "arn:aws:sts::123456789012:assumed-role/readme-caller/docs" {
			t.Fatalf("%s snippet's proof: %+v", lang, c)
		}
	}

	py := readmeBlock(t, "python", "def identity_proof")
	if !strings.Contains(py, `FUNCTION = "`+readmeFunction+`"`) {
		t.Fatalf("the boto3 snippet does not name the vend function by its ARN %s", readmeFunction)
	}
	// The snippet's own vendor id (FUNCTION), as written.
	py = py[:strings.Index(py, "\nevent = ")] + "\nprint(json.dumps(identity_proof(FUNCTION, \"us-east-1\")))\n"
	cmd := exec.Command("python3", "-c", py)
	cmd.Env = env
	out, err := cmd.Output()
	check("boto3", out, err)

	if _, err := exec.LookPath("npm"); err != nil {
		testenv.SkipOrFail(t, "npm is needed for the JavaScript snippet")
	}
	dir, _ := filepath.Abs("js")
	var npmErr error
	npmOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(dir, "node_modules")); err == nil {
			return
		}
		c := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
		c.Dir = dir
		if out, err := c.CombinedOutput(); err != nil {
			npmErr = err
			t.Logf("npm ci: %s", out)
		}
	})
	if npmErr != nil {
		t.Fatal(npmErr)
	}
	js := readmeBlock(t, "js", "async function identityProof") +
		"\nconsole.log(JSON.stringify(await identityProof(process.argv[2], \"us-east-1\")));\n"
	file := filepath.Join(dir, "readme-snippet-"+testenv.RandomSuffix()+".mjs")
	if err := os.WriteFile(file, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(file)
	cmd = exec.Command("node", file, readmeFunction)
	cmd.Env = env
	out, err = cmd.Output()
	check("JavaScript", out, err)
}
