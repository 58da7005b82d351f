// Package deploy checks what `sam build` and `sam deploy` rely on: the
// template's security properties and the Lambda binaries.
package deploy

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/tests/lambdart"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func loadTemplate(t *testing.T) (*yaml.Node, string) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := lambdart.LoadTemplate()
	if err != nil {
		t.Fatal(err)
	}
	return doc, root
}

var (
	get     = lambdart.Get
	scalars = lambdart.Scalars
)

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
			a := get(ev, "Properties", "Auth", "Authorizer")
			if path := get(ev, "Properties", "Path").Value; path == "/v1/providers/{provider}/jwks.json" && get(ev, "Properties", "Method").Value == "GET" {
				continue // public keys only: the one route an authorization server fetches without IAM
			}
			if a == nil || a.Value != "AWS_IAM" {
				t.Errorf("%s route %s does not use AWS_IAM", fname, evs.Content[i].Value)
			}
		}
	}
	if routes != 7 {
		t.Fatalf("want the 7 routes of docs/design.md §5, found %d", routes)
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

// Log groups must exist before their functions write to them: each function
// names its group through LoggingConfig (so it depends on it), and no group
// is named after a function (which would make it depend on the function).
func TestLogGroupsCreatedBeforeFunctions(t *testing.T) {
	root, _ := loadTemplate(t)
	groups := resources(t, root, "AWS::Logs::LogGroup")
	fns := resources(t, root, "AWS::Serverless::Function")
	for name, fn := range fns {
		lg := get(fn, "Properties", "LoggingConfig", "LogGroup")
		if lg == nil || lg.Tag != "!Ref" || groups[lg.Value] == nil {
			t.Errorf("%s: LoggingConfig.LogGroup is not a !Ref to a log group of the stack", name)
		}
	}
	for name, g := range groups {
		for fn := range fns {
			if strings.Contains(get(g, "Properties", "LogGroupName").Value, "${"+fn+"}") {
				t.Errorf("log group %s is named after %s, so it is created after it", name, fn)
			}
		}
		if get(g, "Properties", "RetentionInDays") == nil {
			t.Errorf("log group %s keeps logs forever", name)
		}
	}
}

// No function is granted what the code never calls: the store has no
// delete, and listing secrets is off (it cannot be limited to the prefix).
func TestNoUnusedGrants(t *testing.T) {
	root, _ := loadTemplate(t)
	for name, fn := range resources(t, root, "AWS::Serverless::Function") {
		for _, a := range scalars(get(fn, "Properties", "Policies")) {
			if a == "dynamodb:DeleteItem" || a == "secretsmanager:ListSecrets" {
				t.Errorf("%s is granted %s, which the code does not use", name, a)
			}
		}
	}
	env := get(root, "Globals", "Function", "Environment", "Variables", "LIST_PROVIDER_SECRETS")
	if env == nil || env.Value != "false" {
		t.Error("LIST_PROVIDER_SECRETS must be false where ListSecrets is not granted")
	}
}

// The token key: only the three function roles may use it, only for data
// keys bound the way the envelope binds them; the account administers it
// without being able to decrypt, re-encrypt or grant; no IAM policy grants
// the key's use anywhere (the key policy is the one place).
func TestTokenKeyPolicyLeastPrivilege(t *testing.T) {
	root, _ := loadTemplate(t)
	for name, fn := range resources(t, root, "AWS::Serverless::Function") {
		for _, a := range scalars(get(fn, "Properties", "Policies")) {
			if a == "kms:Decrypt" || a == "kms:GenerateDataKey" {
				t.Errorf("%s: an IAM grant of %s; the key policy alone grants the token key", name, a)
			}
		}
	}
	key := resources(t, root, "AWS::KMS::Key")["TokenKey"]
	if key == nil {
		t.Fatal("no TokenKey")
	}
	use := 0
	for _, st := range get(key, "Properties", "KeyPolicy", "Statement").Content {
		effect, actions := get(st, "Effect").Value, scalars(get(st, "Action"))
		principals := scalars(get(st, "Principal", "AWS"))
		if effect == "Deny" {
			continue
		}
		for _, a := range actions {
			if a == "kms:*" || a == "kms:Decrypt" || a == "kms:ReEncrypt*" || a == "kms:ReEncryptFrom" || a == "kms:CreateGrant" || a == "kms:Encrypt" {
				if a != "kms:Decrypt" || get(st, "Sid").Value != "FunctionsUseDataKeysBoundToCacheRecords" {
					t.Errorf("statement %s allows %s", get(st, "Sid").Value, a)
				}
			}
		}
		if !slices.Contains(actions, "kms:Decrypt") {
			continue
		}
		use++
		want := []string{"ApiFunctionRole.Arn", "RefresherFunctionRole.Arn", "VendFunctionRole.Arn"}
		slices.Sort(principals)
		if !slices.Equal(principals, want) {
			t.Errorf("key use granted to %v, want exactly the function roles %v", principals, want)
		}
		if got := scalars(get(st, "Action")); len(got) != 2 || !slices.Contains(got, "kms:GenerateDataKey") {
			t.Errorf("function roles may %v, want GenerateDataKey and Decrypt only", got)
		}
		keys := scalars(get(st, "Condition", "ForAllValues:StringEquals", "kms:EncryptionContextKeys"))
		slices.Sort(keys)
		want = slices.Clone(vend.EncryptionContextKeys)
		slices.Sort(want)
		if !slices.Equal(keys, want) {
			t.Errorf("kms:EncryptionContextKeys %v, the envelope binds %v", keys, want)
		}
		if pk := get(st, "Condition", "StringLike", "kms:EncryptionContext:pk"); pk == nil || pk.Value != "token#*" {
			t.Error("key use not limited to token records")
		}
	}
	if use != 1 {
		t.Fatalf("want one statement granting the key's use, found %d", use)
	}
}

// The function URL is a second identity-bearing path: AWS_IAM only, and
// only when asked for.
func TestFunctionURLOptionalAndIAM(t *testing.T) {
	root, _ := loadTemplate(t)
	urls := resources(t, root, "AWS::Lambda::Url")
	if len(urls) != 1 {
		t.Fatalf("want one function URL, found %d", len(urls))
	}
	for name, u := range urls {
		if get(u, "Condition") == nil || get(u, "Condition").Value != "HasFunctionUrl" {
			t.Errorf("%s is not optional", name)
		}
		if get(u, "Properties", "AuthType").Value != "AWS_IAM" {
			t.Errorf("%s: AuthType is not AWS_IAM", name)
		}
		if v := scalars(get(u, "Properties", "TargetFunctionArn")); !slices.Contains(v, "ApiFunction.Arn") {
			t.Errorf("%s does not target the api function: %v", name, v)
		}
	}
	if d := get(root, "Parameters", "EnableFunctionUrl", "Default"); d == nil || d.Value != "false" {
		t.Error("EnableFunctionUrl must default to false")
	}
}

// The schedule is derived from RefreshIntervalSeconds, so the two cannot
// disagree: every allowed interval maps to a rate of exactly that period.
func TestScheduleDerivedFromRefreshInterval(t *testing.T) {
	root, _ := loadTemplate(t)
	allowed := scalars(get(root, "Parameters", "RefreshIntervalSeconds", "AllowedValues"))
	if len(allowed) == 0 {
		t.Fatal("RefreshIntervalSeconds has no AllowedValues")
	}
	rates := get(root, "Mappings", "RefreshRate")
	for _, v := range allowed {
		expr := get(rates, v, "Expression")
		if expr == nil {
			t.Fatalf("no rate for %s s", v)
		}
		var n int
		var unit string
		if _, err := fmt.Sscanf(expr.Value, "rate(%d %s", &n, &unit); err != nil {
			t.Fatalf("%s: %v", expr.Value, err)
		}
		secs, _ := strconv.Atoi(v)
		if want := map[bool]string{true: "minute)", false: "minutes)"}[n == 1]; unit != want || n*60 != secs {
			t.Errorf("interval %s s has schedule %s", v, expr.Value)
		}
	}
	var sched *yaml.Node
	for _, fn := range resources(t, root, "AWS::Serverless::Function") {
		if s := get(fn, "Properties", "Events", "Schedule", "Properties", "Schedule"); s != nil {
			sched = s
		}
	}
	if sched == nil || sched.Tag != "!FindInMap" || !slices.Contains(scalars(sched), "RefreshIntervalSeconds") {
		t.Fatal("the refresher's schedule is not derived from RefreshIntervalSeconds")
	}
	if env := get(root, "Globals", "Function", "Environment", "Variables", "REFRESH_INTERVAL"); env == nil || env.Value != "RefreshIntervalSeconds" {
		t.Fatal("REFRESH_INTERVAL is not RefreshIntervalSeconds")
	}
}

// The refresh index in template.yaml is the one the code queries and
// dynamostore.CreateTable makes for DynamoDB Local: same name, keys and
// projection; only the refresher may query it, and nothing scans for it.
func TestRefreshIndexMatchesTheCode(t *testing.T) {
	root, _ := loadTemplate(t)
	var table *yaml.Node
	for _, tb := range resources(t, root, "AWS::DynamoDB::Table") {
		table = tb
	}
	gsis := get(table, "Properties", "GlobalSecondaryIndexes")
	if gsis == nil || len(gsis.Content) != 1 {
		t.Fatal("want exactly one global secondary index")
	}
	gsi := gsis.Content[0]
	if get(gsi, "IndexName").Value != dynamostore.IndexName {
		t.Fatalf("index %q, the code queries %q", get(gsi, "IndexName").Value, dynamostore.IndexName)
	}
	keys := scalars(get(gsi, "KeySchema"))
	if strings.Join(keys, " ") != "AttributeName due_shard KeyType HASH AttributeName refresh_at KeyType RANGE" {
		t.Fatalf("index keys %v", keys)
	}
	if get(gsi, "Projection", "ProjectionType").Value != "INCLUDE" ||
		strings.Join(scalars(get(gsi, "Projection", "NonKeyAttributes")), " ") != strings.Join(store.IndexAttributes, " ") {
		t.Fatalf("projection %v, the code reads %v", scalars(get(gsi, "Projection")), store.IndexAttributes)
	}
	if strings.Contains(strings.Join(scalars(get(gsi, "Projection")), " "), "access_token") {
		t.Fatal("the index must never hold tokens")
	}
	for name, fn := range resources(t, root, "AWS::Serverless::Function") {
		var stmts []*yaml.Node
		statements(get(fn, "Properties", "Policies"), &stmts)
		query := false
		for _, st := range stmts {
			for _, a := range scalars(get(st, "Action")) {
				if a == "dynamodb:Query" {
					query = true
					if r := get(st, "Resource"); r.Tag != "!Sub" || r.Value != "${TokenTable.Arn}/index/"+dynamostore.IndexName {
						t.Errorf("%s: Query granted beyond the refresh index: %v", name, scalars(r))
					}
				}
				if a == "dynamodb:Scan" && name == "RefresherFunction" {
					t.Error("the refresher reads the index; it must not be able to scan the table")
				}
			}
		}
		if query != (name == "RefresherFunction") {
			t.Errorf("%s: Query granted = %v; only the refresher reads the index", name, query)
		}
	}
}

// The extension layers build through their build-<LogicalId> targets, as
// `sam build` calls them, into extensions/token-vendor for the architecture
// each layer declares.
func TestExtensionLayersBuildForTheirArchitectures(t *testing.T) {
	root, dir := loadTemplate(t)
	machines := map[string]elf.Machine{"arm64": elf.EM_AARCH64, "x86_64": elf.EM_X86_64}
	layers := resources(t, root, "AWS::Serverless::LayerVersion")
	if len(layers) != 2 {
		t.Fatalf("want an extension layer per architecture, got %d layers", len(layers))
	}
	for name, l := range layers {
		arch := get(l, "Metadata", "BuildArchitecture").Value
		if compat := scalars(get(l, "Properties", "CompatibleArchitectures")); len(compat) != 1 || compat[0] != arch {
			t.Errorf("%s: built for %s, compatible with %v", name, arch, compat)
		}
		out := t.TempDir()
		cmd := exec.Command("make", "-s", "build-"+name, "ARTIFACTS_DIR="+out)
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, b)
		}
		f, err := elf.Open(filepath.Join(out, "extensions", "token-vendor"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if f.Machine != machines[arch] {
			t.Errorf("%s: machine %v, want %s", name, f.Machine, arch)
		}
		f.Close()
	}
}

// kms:Sign and kms:GetPublicKey (private_key_jwt with kms_key_id) are granted
// only on the keys the SigningKeyArns parameter names, and only when it
// names any: no wildcard, nothing by default.
func TestSigningGrantsOnlyOnNamedKeys(t *testing.T) {
	root, _ := loadTemplate(t)
	if p := get(root, "Parameters", "SigningKeyArns"); p == nil || get(p, "Default").Value != "" {
		t.Fatal("want a SigningKeyArns parameter, empty by default")
	}
	for name, fn := range resources(t, root, "AWS::Serverless::Function") {
		granted := false
		for _, pol := range get(fn, "Properties", "Policies").Content {
			var stmts []*yaml.Node
			statements(pol, &stmts)
			for _, st := range stmts {
				acts := scalars(get(st, "Action"))
				if !slices.Contains(acts, "kms:Sign") && !slices.Contains(acts, "kms:GetPublicKey") {
					continue
				}
				granted = true
				if pol.Tag != "!If" || pol.Content[0].Value != "HasSigningKeys" {
					t.Errorf("%s: kms:Sign granted outside the HasSigningKeys condition", name)
				}
				if r := get(st, "Resource"); r.Tag != "!Ref" || r.Value != "SigningKeyArns" {
					t.Errorf("%s: kms:Sign granted on %v, not on SigningKeyArns", name, scalars(r))
				}
			}
		}
		if !granted {
			t.Errorf("%s fetches tokens but cannot sign assertions with a KMS key", name)
		}
	}
}

// The schedule does not replay a run (the next one takes what it left), and
// the refresher has reserved concurrency and its run-wide concurrency set.
func TestRefresherRunsAreNotRetriedAndHaveCapacity(t *testing.T) {
	root, _ := loadTemplate(t)
	fn := resources(t, root, "AWS::Serverless::Function")["RefresherFunction"]
	if fn == nil {
		t.Fatal("no RefresherFunction")
	}
	if v := get(fn, "Properties", "Events", "Schedule", "Properties", "RetryPolicy", "MaximumRetryAttempts"); v == nil || v.Value != "0" {
		t.Error("the schedule's target may retry a run: want RetryPolicy.MaximumRetryAttempts 0")
	}
	if v := get(fn, "Properties", "ReservedConcurrentExecutions"); v == nil {
		t.Error("the refresher has no reserved concurrency")
	}
	if v := get(fn, "Properties", "Environment", "Variables", "REFRESH_CONCURRENCY"); v == nil {
		t.Error("REFRESH_CONCURRENCY is not set for the refresher")
	}
	// Lambda's own retries of an asynchronous invocation (the schedule's,
	// and every shard run's) would replay a run: none.
	if v := get(fn, "Properties", "EventInvokeConfig", "MaximumRetryAttempts"); v == nil || v.Value != "0" {
		t.Error("Lambda may retry a failed or timed-out run: want EventInvokeConfig.MaximumRetryAttempts 0")
	}
	if v := get(fn, "Properties", "EventInvokeConfig", "MaximumEventAgeInSeconds"); v == nil || v.Value != "RefreshIntervalSeconds" {
		t.Error("a queued shard run must not outlive the interval: want MaximumEventAgeInSeconds !Ref RefreshIntervalSeconds")
	}
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// The fan-out: the refresher may invoke itself and nothing else, only when
// RefreshFanOut is on, and it has the concurrency for every shard at once.
func TestRefresherFanOutGrantsOnlySelfInvoke(t *testing.T) {
	root, _ := loadTemplate(t)
	fn := resources(t, root, "AWS::Serverless::Function")["RefresherFunction"]
	if v := get(fn, "Properties", "Environment", "Variables", "REFRESH_FANOUT"); v == nil || v.Value != "RefreshFanOut" {
		t.Error("REFRESH_FANOUT is not the RefreshFanOut parameter")
	}
	if d := get(root, "Parameters", "RefresherReservedConcurrency", "Default"); d == nil || atoi(d.Value) < store.Shards+1 {
		t.Errorf("reserved concurrency default %v: a fanned-out run needs %d (every shard and the dispatcher)", d, store.Shards+1)
	}
	var grants int
	res := get(root, "Resources")
	for i := 0; i+1 < len(res.Content); i += 2 {
		name, r := res.Content[i].Value, res.Content[i+1]
		var stmts []*yaml.Node
		statements(r, &stmts)
		for _, st := range stmts {
			for _, a := range scalars(get(st, "Action")) {
				if !strings.HasPrefix(a, "lambda:Invoke") {
					continue
				}
				if name == "RefresherFanOutPolicy" {
					grants++
					if a != "lambda:InvokeFunction" || get(st, "Resource").Tag != "!GetAtt" || get(st, "Resource").Value != "RefresherFunction.Arn" {
						t.Errorf("the fan-out grant is %s on %v; want lambda:InvokeFunction on RefresherFunction.Arn only", a, get(st, "Resource").Value)
					}
				}
			}
		}
	}
	pol := resources(t, root, "AWS::IAM::Policy")["RefresherFanOutPolicy"]
	if grants != 1 || pol == nil || get(pol, "Condition").Value != "HasFanOut" || len(scalars(get(pol, "Properties", "Roles"))) != 1 ||
		scalars(get(pol, "Properties", "Roles"))[0] != "RefresherFunctionRole" {
		t.Error("want one RefresherFanOutPolicy, under HasFanOut, on RefresherFunctionRole alone")
	}
}

// sts:GetWebIdentityToken is granted only when WebIdentityAudiences names
// audiences, and only for those (sts:IdentityTokenAudience).
func TestWebIdentityGrantLimitedToAudiences(t *testing.T) {
	root, _ := loadTemplate(t)
	found := 0
	for name, fn := range resources(t, root, "AWS::Serverless::Function") {
		p := get(fn, "Properties", "Policies")
		for _, pol := range p.Content {
			if pol.Tag != "!If" || len(pol.Content) != 3 || pol.Content[0].Value != "HasWebIdentity" {
				continue
			}
			var stmts []*yaml.Node
			statements(pol.Content[1], &stmts)
			for _, st := range stmts {
				if !slices.Contains(scalars(get(st, "Action")), "sts:GetWebIdentityToken") {
					continue
				}
				found++
				c := get(st, "Condition", "ForAllValues:StringEquals", "sts:IdentityTokenAudience")
				if c == nil || !slices.Contains(scalars(c), "WebIdentityAudiences") {
					t.Errorf("%s: GetWebIdentityToken without the audience condition", name)
				}
			}
		}
	}
	if found != 3 {
		t.Fatalf("want the conditional grant on the 3 functions, found %d", found)
	}
	if d := get(root, "Parameters", "WebIdentityAudiences", "Default"); d == nil || d.Value != "" {
		t.Error("WebIdentityAudiences must default to empty (no grant)")
	}
}
