// Package deploy checks what `sam build` and `sam deploy` rely on: the
// template's security properties and the Lambda binaries.
package deploy

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

func loadTemplate(t *testing.T) (*yaml.Node, string) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Content[0], root
}

// get walks mapping keys.
func get(n *yaml.Node, path ...string) *yaml.Node {
	for _, k := range path {
		if n == nil || n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				next = n.Content[i+1]
			}
		}
		n = next
	}
	return n
}

func resources(t *testing.T, root *yaml.Node, typ string) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	res := get(root, "Resources")
	for i := 0; i+1 < len(res.Content); i += 2 {
		if get(res.Content[i+1], "Type").Value == typ {
			out[res.Content[i].Value] = res.Content[i+1]
		}
	}
	return out
}

func TestEveryRouteUsesIAM(t *testing.T) {
	root, _ := loadTemplate(t)
	apis := resources(t, root, "AWS::Serverless::HttpApi")
	for name, api := range apis {
		if v := get(api, "Properties", "Auth", "DefaultAuthorizer"); v == nil || v.Value != "AWS_IAM" {
			t.Errorf("HttpApi %s: DefaultAuthorizer is not AWS_IAM", name)
		}
	}
	routes := 0
	for fname, fn := range resources(t, root, "AWS::Serverless::Function") {
		evs := get(fn, "Properties", "Events")
		if evs == nil {
			continue
		}
		for i := 0; i+1 < len(evs.Content); i += 2 {
			ev := evs.Content[i+1]
			if get(ev, "Type").Value != "HttpApi" {
				continue
			}
			routes++
			if a := get(ev, "Properties", "Auth", "Authorizer"); a == nil || a.Value != "AWS_IAM" {
				t.Errorf("%s route %s does not use AWS_IAM", fname, evs.Content[i].Value)
			}
		}
	}
	if routes != 6 {
		t.Fatalf("want the 6 routes of DESIGN.md §5, found %d", routes)
	}
}

func TestTableTTLAndBilling(t *testing.T) {
	root, _ := loadTemplate(t)
	tables := resources(t, root, "AWS::DynamoDB::Table")
	if len(tables) != 1 {
		t.Fatalf("want one table, got %d", len(tables))
	}
	for _, tb := range tables {
		p := get(tb, "Properties")
		if get(p, "TimeToLiveSpecification", "AttributeName").Value != "expires_at" || get(p, "TimeToLiveSpecification", "Enabled").Value != "true" {
			t.Error("TTL must be enabled on expires_at")
		}
		if get(p, "BillingMode").Value != "PAY_PER_REQUEST" {
			t.Error("table must be on-demand")
		}
		if get(p, "PointInTimeRecoverySpecification", "PointInTimeRecoveryEnabled").Value != "true" {
			t.Error("point-in-time recovery off")
		}
	}
}

// statements finds every IAM statement in the functions' Policies.
func statements(n *yaml.Node, out *[]*yaml.Node) {
	if n == nil {
		return
	}
	if n.Kind == yaml.MappingNode && get(n, "Effect") != nil && get(n, "Action") != nil {
		*out = append(*out, n)
		return
	}
	for _, c := range n.Content {
		statements(c, out)
	}
}

func scalars(n *yaml.Node) []string {
	if n.Kind == yaml.ScalarNode {
		return []string{n.Value}
	}
	var out []string
	for _, c := range n.Content {
		out = append(out, scalars(c)...)
	}
	return out
}

func TestLeastPrivilege(t *testing.T) {
	root, _ := loadTemplate(t)
	var stmts []*yaml.Node
	for _, fn := range resources(t, root, "AWS::Serverless::Function") {
		statements(get(fn, "Properties", "Policies"), &stmts)
		if p := get(fn, "Properties", "Policies"); p != nil {
			for _, v := range scalars(p) {
				if strings.HasSuffix(v, "FullAccess") || strings.HasSuffix(v, "CrudPolicy") {
					t.Errorf("broad managed policy %s", v)
				}
			}
		}
	}
	if len(stmts) == 0 {
		t.Fatal("no policy statements found")
	}
	for _, st := range stmts {
		actions := scalars(get(st, "Action"))
		res := get(st, "Resource")
		for _, a := range actions {
			svc := strings.SplitN(a, ":", 2)[0]
			if svc != "secretsmanager" && svc != "dynamodb" && svc != "kms" {
				continue
			}
			if strings.HasSuffix(a, ":*") {
				t.Errorf("wildcard action %s", a)
			}
			if res == nil {
				t.Errorf("%s without a Resource", a)
				continue
			}
			for _, r := range scalars(res) {
				if r == "*" {
					t.Errorf("%s granted on Resource \"*\"", a)
				}
			}
			if svc == "secretsmanager" && res.Tag == "!Sub" && !strings.Contains(res.Value, "${ProviderSecretPrefix}") {
				t.Errorf("Secrets Manager access not limited to the prefix: %s", res.Value)
			}
		}
	}
}

func TestCfnLint(t *testing.T) {
	_, root := loadTemplate(t)
	if _, err := exec.LookPath("cfn-lint"); err != nil {
		testenv.SkipOrFail(t, "cfn-lint not installed (make test installs it)")
	}
	out, err := exec.Command("cfn-lint", filepath.Join(root, "template.yaml")).CombinedOutput()
	if err != nil {
		t.Fatalf("cfn-lint: %v\n%s", err, out)
	}
}

// TestBootstrapsBuildForArm64 builds each function the way `sam build` does.
func TestBootstrapsBuildForArm64(t *testing.T) {
	_, root := loadTemplate(t)
	for _, fn := range []string{"api", "vend", "refresher"} {
		out := filepath.Join(t.TempDir(), "bootstrap")
		cmd := exec.Command("go", "build", "-trimpath", "-tags", "lambda.norpc", "-ldflags", "-s -w", "-o", out, "./functions/"+fn)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", fn, err, b)
		}
		f, err := elf.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		if f.Machine != elf.EM_AARCH64 {
			t.Fatalf("%s: machine %v", fn, f.Machine)
		}
		f.Close()
		st, _ := os.Stat(out)
		if st.Size() > 15<<20 {
			t.Fatalf("%s: bootstrap is %d bytes, over 15 MB", fn, st.Size())
		}
	}
}
