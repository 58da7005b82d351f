package deploy

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

type statement struct {
	Sid       string
	Effect    string
	Principal struct{ AWS any }
	Action    any
	Resource  any
	Condition map[string]map[string]any
}

type policyDoc struct {
	Version   string
	Statement []statement
}

func list(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			s, _ := e.(string)
			out = append(out, s)
		}
		return out
	}
	return nil
}

// TestREADMEPolicies parses every IAM or key policy the README shows and
// checks each grants what its text says and no more: route ARNs name one
// provider and come without direct invoke; direct invoke is on the vend
// function, never the api function (whose events carry the identity);
// function URLs only with AuthType AWS_IAM; signing keys sign only for the
// function roles, with the algorithm and message type pinned.
//
// In every docs page (README.md, docs/*.md): a function URL grant carries
// lambda:InvokeFunction too (required since October 2025), and that only
// with lambda:InvokedViaFunctionUrl true, so the grantee cannot invoke the
// api function with an event of its own; the guards (SCP, boundary) deny
// lambda:InvokeFunction on the api function unless invoked via the URL.
func TestREADMEPolicies(t *testing.T) {
	loadTemplate(t)
	// README.md and docs/*.md, wherever the examples live.
	checkPolicies(t, testenv.DocBlocks(t, "json", `"Statement"`), []string{"route", "invoke", "url", "url-invoke", "sign", "layer", "guard"})
}

// policyBlocks returns the JSON policy documents (blocks with a Statement)
// of one Markdown file.
func policyBlocks(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range regexp.MustCompile("(?s)```json\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		if strings.Contains(m[1], `"Statement"`) {
			out = append(out, m[1])
		}
	}
	return out
}

func checkPolicies(t *testing.T, blocks []string, want []string) {
	seen := map[string]bool{}
	for _, block := range blocks {
		m := []string{"", block}
		if !strings.Contains(m[1], `"Statement"`) {
			continue
		}
		var doc policyDoc
		if err := json.Unmarshal([]byte(m[1]), &doc); err != nil {
			t.Errorf("README policy is not valid JSON: %v\n%s", err, m[1])
			continue
		}
		if doc.Version != "2012-10-17" || len(doc.Statement) == 0 {
			t.Errorf("README policy without Version 2012-10-17 or statements:\n%s", m[1])
		}
		var actions []string
		for _, st := range doc.Statement {
			actions = append(actions, list(st.Action)...)
		}
		viaURL := func(st statement) bool {
			return st.Condition["Bool"]["lambda:InvokedViaFunctionUrl"] == "true" && len(st.Condition) == 1 && len(st.Condition["Bool"]) == 1
		}
		for _, st := range doc.Statement {
			acts, res := list(st.Action), list(st.Resource)
			if st.Effect == "Deny" {
				for _, a := range acts {
					if a != "lambda:InvokeFunction" {
						t.Errorf("a guard denies %s; the guards deny lambda:InvokeFunction on the api function", a)
						continue
					}
					seen["guard"] = true
					for _, r := range res {
						if !strings.Contains(r, "function:token-vendor-ApiFunction-") {
							t.Errorf("guard on %s, not the api function", r)
						}
					}
					if st.Condition["BoolIfExists"]["lambda:InvokedViaFunctionUrl"] != "false" || len(st.Condition) != 1 {
						t.Errorf("guard without BoolIfExists lambda:InvokedViaFunctionUrl false (it would deny the function URL, or not deny direct invoke): %v", st.Condition)
					}
				}
				continue
			}
			if st.Effect != "Allow" {
				continue
			}
			for _, a := range acts {
				if a == "*" || strings.HasSuffix(a, ":*") {
					t.Errorf("README policy grants %s", a)
				}
				switch a {
				case "execute-api:Invoke":
					seen["route"] = true
					if slices.Contains(actions, "lambda:InvokeFunction") {
						t.Error("a per-provider route grant also grants direct invoke, which reaches every provider")
					}
					for _, r := range res {
						parts := strings.Split(r, "/")
						if len(parts) < 5 || parts[len(parts)-1] == "*" || strings.Contains(parts[len(parts)-1], "*") || parts[2] != "GET" {
							t.Errorf("route grant %s does not name one provider's GET route", r)
						}
					}
				case "lambda:InvokeFunction":
					if viaURL(st) {
						// The function URL's second action: the api function,
						// and only through the URL.
						seen["url-invoke"] = true
						if !slices.Contains(actions, "lambda:InvokeFunctionUrl") {
							t.Error("lambda:InvokeFunction via the URL granted without lambda:InvokeFunctionUrl")
						}
						for _, r := range res {
							if !strings.Contains(r, "ApiFunction") || strings.HasSuffix(r, "*") {
								t.Errorf("URL invoke granted on %s; only the api function", r)
							}
						}
						continue
					}
					seen["invoke"] = true
					for _, r := range res {
						if !strings.Contains(r, "VendFunction") || strings.Contains(r, "ApiFunction") || strings.HasSuffix(r, "*") {
							t.Errorf("direct invoke granted on %s; only the vend function, or the api function with lambda:InvokedViaFunctionUrl true", r)
						}
					}
				case "lambda:InvokeFunctionUrl":
					seen["url"] = true
					if st.Condition["StringEquals"]["lambda:FunctionUrlAuthType"] != "AWS_IAM" {
						t.Error("function URL grant without lambda:FunctionUrlAuthType = AWS_IAM")
					}
					// Since October 2025 a new function URL also needs
					// lambda:InvokeFunction; without it the grant gets 403.
					both := false
					for _, o := range doc.Statement {
						if o.Effect == "Allow" && slices.Contains(list(o.Action), "lambda:InvokeFunction") && viaURL(o) && slices.Equal(list(o.Resource), res) {
							both = true
						}
					}
					if !both {
						t.Error("function URL grant without lambda:InvokeFunction (only with lambda:InvokedViaFunctionUrl true) on the same function")
					}
				case "lambda:GetLayerVersion":
					seen["layer"] = true
					for _, r := range res {
						if !strings.Contains(r, ":layer:token-vendor-extension-") {
							t.Errorf("layer grant on %s, not the extension layer", r)
						}
					}
				case "kms:Sign":
					seen["sign"] = true
					for _, p := range list(st.Principal.AWS) {
						if !strings.Contains(p, "FunctionRole") {
							t.Errorf("kms:Sign granted to %s, not a function role", p)
						}
					}
					if len(list(st.Principal.AWS)) != 3 {
						t.Errorf("kms:Sign to %v, want the three function roles", st.Principal.AWS)
					}
					c := st.Condition["StringEquals"]
					if c["kms:SigningAlgorithm"] == nil || c["kms:MessageType"] != "RAW" {
						t.Errorf("kms:Sign without kms:SigningAlgorithm and kms:MessageType RAW: %v", st.Condition)
					}
				case "kms:Decrypt", "kms:CreateGrant", "kms:ReEncryptFrom":
					t.Errorf("README key policy grants %s", a)
				}
				if strings.HasPrefix(a, "kms:") && a != "kms:Sign" && a != "kms:GetPublicKey" {
					for _, p := range list(st.Principal.AWS) {
						if strings.Contains(p, "FunctionRole") {
							t.Errorf("function role granted %s on a signing key", a)
						}
					}
				}
			}
		}
	}
	for _, k := range want {
		if !seen[k] {
			t.Errorf("the docs have no %s policy example to check", k)
		}
	}
}
