package deploy

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

type policyDoc struct {
	Version   string
	Statement []struct {
		Sid       string
		Effect    string
		Principal struct{ AWS any }
		Action    any
		Resource  any
		Condition map[string]map[string]any
	}
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
func TestREADMEPolicies(t *testing.T) {
	loadTemplate(t)
	blocks := regexp.MustCompile("(?s)```json\n(.*?)```").FindAllStringSubmatch(testenv.Docs(t), -1)
	seen := map[string]bool{}
	for _, m := range blocks {
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
		for _, st := range doc.Statement {
			acts, res := list(st.Action), list(st.Resource)
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
					seen["invoke"] = true
					for _, r := range res {
						if !strings.Contains(r, "VendFunction") || strings.Contains(r, "ApiFunction") || strings.HasSuffix(r, "*") {
							t.Errorf("direct invoke granted on %s; only the vend function", r)
						}
					}
				case "lambda:InvokeFunctionUrl":
					seen["url"] = true
					if st.Condition["StringEquals"]["lambda:FunctionUrlAuthType"] != "AWS_IAM" {
						t.Error("function URL grant without lambda:FunctionUrlAuthType = AWS_IAM")
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
	for _, k := range []string{"route", "invoke", "url", "sign"} {
		if !seen[k] {
			t.Errorf("the README has no %s policy example to check", k)
		}
	}
}
