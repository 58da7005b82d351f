package deploy

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

func translated(t *testing.T) map[string]any {
	t.Helper()
	doc, err := Translated()
	if errors.Is(err, ErrNoTranslator) {
		testenv.SkipOrFail(t, err.Error()+" (make test installs cfn-lint)")
	}
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

const (
	consumerOrg   = "o-a1b2c3d4e5"
	orgMember     = "333333333333"
	namedAccount  = "222222222222"
	outsider      = "444444444444"
	outsiderOrg   = "o-zzzzzzzzzz"
	apiGW         = "apigateway.amazonaws.com"
	stackRoute    = "arn:aws:execute-api:" + Region + ":" + VendorAccount + ":" + HttpApiID + "/$default/GET/v1/tokens/kopokopo"
	otherAPIRoute = "arn:aws:execute-api:" + Region + ":" + VendorAccount + ":otherapi99/$default/GET/v1/tokens/kopokopo"
	foreignRoute  = "arn:aws:execute-api:" + Region + ":" + outsider + ":" + HttpApiID + "/$default/GET/v1/tokens/kopokopo"
)

// TestTopologyResourcePolicies evaluates the Lambda resource policies a
// deploy of template.yaml creates (SAM's translation, so SAM's API Gateway
// permissions are included) for a dedicated vendor account with consumers
// named by organization and by account. Proven against the policy text,
// not live Lambda.
func TestTopologyResourcePolicies(t *testing.T) {
	doc := translated(t)
	api, vend := FunctionARN("ApiFunction"), FunctionARN("VendFunction")
	arm, x86 := LayerARN(LayerLogical(doc, "TokenExtensionArm64")), LayerARN(LayerLogical(doc, "TokenExtensionX86"))
	ps, err := ResourcePoliciesOf(doc, map[string]string{"ConsumerOrgId": consumerOrg, "ConsumerAccountIds": "111111111111," + namedAccount, "EnableFunctionUrl": "true"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.Principal == "*" && p.PrincipalOrgID == "" {
			t.Errorf("%s is public (Principal * without PrincipalOrgID)", p.Logical)
		}
		if p.Resource == api && p.Action == "lambda:InvokeFunction" && p.Principal != apiGW && !p.InvokedViaFunctionURL {
			t.Errorf("%s grants direct invoke of the api function to %s", p.Logical, p.Principal)
		}
		if p.Principal == apiGW && (p.SourceArn == "" || !strings.Contains(p.SourceArn, ":"+VendorAccount+":"+HttpApiID+"/")) {
			t.Errorf("%s: API Gateway may invoke from %q, not only the stack's API", p.Logical, p.SourceArn)
		}
	}
	type consumer struct {
		name, account, org string
		in                 bool
	}
	for _, c := range []consumer{
		{"a principal of an account in the organization", orgMember, consumerOrg, true},
		{"a principal of an account named in ConsumerAccountIds", namedAccount, "", true},
		{"a principal of an account in another organization", outsider, outsiderOrg, false},
		{"a principal of an account in no organization", outsider, "", false},
	} {
		for _, tc := range []struct {
			what string
			r    Request
			want bool
		}{
			{"invoke the vend function", Request{Action: "lambda:InvokeFunction", Resource: vend}, c.in},
			{"call the function URL (InvokeFunctionUrl, AWS_IAM)", Request{Action: "lambda:InvokeFunctionUrl", Resource: api, ViaURL: true, URLAuthType: "AWS_IAM"}, c.in},
			{"invoke the api function through the URL", Request{Action: "lambda:InvokeFunction", Resource: api, ViaURL: true, URLAuthType: "AWS_IAM"}, c.in},
			{"invoke the api function directly (a forged API event)", Request{Action: "lambda:InvokeFunction", Resource: api}, false},
			{"use the arm64 layer", Request{Action: "lambda:GetLayerVersion", Resource: arm}, c.in},
			{"use the x86_64 layer", Request{Action: "lambda:GetLayerVersion", Resource: x86}, c.in},
		} {
			tc.r.Account, tc.r.OrgID = c.account, c.org
			if got := ps.Allowed(tc.r); got != tc.want {
				t.Errorf("%s may %s: %v, want %v", c.name, tc.what, got, tc.want)
			}
		}
	}
	for _, tc := range []struct {
		what string
		r    Request
		want bool
	}{
		{"from the stack's API", Request{Service: apiGW, Action: "lambda:InvokeFunction", Resource: api, SourceArn: stackRoute}, true},
		{"from another API of the account", Request{Service: apiGW, Action: "lambda:InvokeFunction", Resource: api, SourceArn: otherAPIRoute}, false},
		{"from an API of another account", Request{Service: apiGW, Action: "lambda:InvokeFunction", Resource: api, SourceArn: foreignRoute}, false},
		{"with no source", Request{Service: apiGW, Action: "lambda:InvokeFunction", Resource: api}, false},
		{"invoking the vend function", Request{Service: apiGW, Action: "lambda:InvokeFunction", Resource: vend, SourceArn: stackRoute}, false},
	} {
		if got := ps.Allowed(tc.r); got != tc.want {
			t.Errorf("API Gateway %s: %v, want %v", tc.what, got, tc.want)
		}
	}

	// Without consumers or a function URL: API Gateway's permissions only.
	plain, err := ResourcePoliciesOf(doc, map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range plain {
		if (p.Resource == api || p.Resource == vend || strings.Contains(p.Resource, ":layer:")) && p.Principal != apiGW || p.Resource == vend {
			t.Errorf("default deploy grants %s %s on %s", p.Principal, p.Action, p.Resource)
		}
	}
	if len(plain) == 0 {
		t.Fatal("no API Gateway permissions in SAM's translation")
	}
	// Consumers without the function URL get no URL grants.
	noURL, err := ResourcePoliciesOf(doc, map[string]string{"ConsumerOrgId": consumerOrg})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range noURL {
		if p.Resource == api && p.Principal != apiGW {
			t.Errorf("%s: a grant on the api function without EnableFunctionUrl", p.Logical)
		}
	}
}

// TestSingleAccountGuards: in the vendor's own account a principal holding
// lambda:InvokeFunction on every function (AWSLambdaRole's grant) may
// invoke the api function directly; with the SCP, the boundary statement
// (both parsed from docs/production-topology.md) or the template's
// ApiInvokeGuardPolicy it may not, while the function URL and the vend
// function stay open to it.
func TestSingleAccountGuards(t *testing.T) {
	_, root := loadTemplate(t)
	lambdaRole := []IdentityStatement{{Effect: "Allow", Action: "lambda:InvokeFunction", Resource: "*"}}
	api := "arn:aws:lambda:us-east-1:123456789012:function:token-vendor-ApiFunction-XXXX"
	vend := "arn:aws:lambda:us-east-1:123456789012:function:token-vendor-VendFunction-XXXX"
	direct := Request{Account: "123456789012", Action: "lambda:InvokeFunction", Resource: api}
	if !IdentityDecision(lambdaRole, nil, direct) {
		t.Fatal("the evaluator does not let AWSLambdaRole's grant invoke the api function unguarded")
	}
	type guard struct {
		name  string
		stmts []IdentityStatement
		api   string
	}
	var guards []guard
	for i, block := range policyBlocks(t, filepath.Join(root, "docs", "production-topology.md")) {
		var doc struct{ Statement []IdentityStatement }
		if err := json.Unmarshal([]byte(block), &doc); err != nil {
			t.Fatal(err)
		}
		if doc.Statement[0].Effect == "Deny" {
			guards = append(guards, guard{name: "docs block " + string(rune('0'+i)), stmts: doc.Statement, api: api})
		}
	}
	if len(guards) != 2 {
		t.Fatalf("want the SCP and the boundary statement on the page, found %d guards", len(guards))
	}
	tg, err := TemplateGuard(translated(t))
	if err != nil {
		t.Fatal(err)
	}
	guards = append(guards, guard{name: "ApiInvokeGuardPolicy", stmts: tg, api: FunctionARN("ApiFunction")})
	for _, g := range guards {
		for _, tc := range []struct {
			what string
			r    Request
			want bool
		}{
			{"invoke the api function directly", Request{Action: "lambda:InvokeFunction", Resource: g.api}, false},
			{"invoke a version of it directly", Request{Action: "lambda:InvokeFunction", Resource: g.api + ":1"}, false},
			{"invoke it through the function URL", Request{Action: "lambda:InvokeFunction", Resource: g.api, ViaURL: true, URLAuthType: "AWS_IAM"}, true},
			{"invoke the vend function", Request{Action: "lambda:InvokeFunction", Resource: vend}, true},
		} {
			tc.r.Account = "123456789012"
			if got := IdentityDecision(lambdaRole, g.stmts, tc.r); got != tc.want {
				t.Errorf("%s: AWSLambdaRole may %s: %v, want %v", g.name, tc.what, got, tc.want)
			}
		}
	}
}
