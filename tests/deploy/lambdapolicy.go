package deploy

// A small evaluator of the Lambda resource policies template.yaml declares,
// and of the identity-side guards (SCP, boundary, ApiInvokeGuardPolicy) the
// production topology page shows. It proves what the policy TEXT allows:
// SAM's own translator (the aws-sam-translator Python package cfn-lint
// ships with) turns the template into the AWS::Lambda::Permission resources
// a deploy creates, including the API Gateway permissions SAM generates, and
// the evaluator decides requests against them. It is not live Lambda (moto
// does not evaluate function policies), so it shows what the policies say,
// not that Lambda enforces them as documented.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

// The vendor's account and region in every evaluation.
const (
	VendorAccount = "999999999999"
	Region        = "us-east-1"
	// HttpApiID stands for the stack's API id (Ref HttpApi).
	HttpApiID = "stackapi01"
)

// FunctionARN is the ARN the evaluator gives a function resource.
func FunctionARN(logical string) string {
	return "arn:aws:lambda:" + Region + ":" + VendorAccount + ":function:" + logical
}

// LayerARN is the layer version ARN the evaluator gives a layer resource.
func LayerARN(logical string) string {
	return "arn:aws:lambda:" + Region + ":" + VendorAccount + ":layer:" + logical + ":1"
}

// Permission is one statement of a function's (or layer's) resource policy.
type Permission struct {
	Logical               string
	Action                string
	Resource              string // function or layer version ARN
	Principal             string // "*", an account id, or a service principal
	PrincipalOrgID        string
	SourceArn             string // StringLike pattern
	SourceAccount         string
	FunctionURLAuthType   string
	InvokedViaFunctionURL bool
}

// Request is one call to Lambda as the resource policy sees it.
type Request struct {
	Account string // caller's account (empty for a service)
	OrgID   string
	Service string // service principal, e.g. apigateway.amazonaws.com
	Action  string
	// Resource is the function or layer version ARN.
	Resource  string
	SourceArn string
	// ViaURL: the call came through the function URL (of that auth type).
	ViaURL      bool
	URLAuthType string
}

// ResourcePolicies are the resource-based permissions of one deploy.
type ResourcePolicies []Permission

// Allowed reports whether a resource policy statement allows r. Across
// accounts that is what decides (the caller's identity policy must allow it
// too, which the caller controls); within the vendor's account identity
// policies alone can allow an invoke, see Guarded.
func (ps ResourcePolicies) Allowed(r Request) bool {
	for _, p := range ps {
		if p.allows(r) {
			return true
		}
	}
	return false
}

func (p Permission) allows(r Request) bool {
	if p.Action != r.Action || p.Resource != r.Resource {
		return false
	}
	switch {
	case strings.HasSuffix(p.Principal, ".amazonaws.com"):
		if r.Service != p.Principal {
			return false
		}
	case p.Principal == "*":
		if r.Service != "" || p.PrincipalOrgID == "" || r.OrgID != p.PrincipalOrgID {
			return false // "*" without an organization would be public: never matched here, refused by the test
		}
	default:
		if r.Service != "" || r.Account != p.Principal {
			return false
		}
	}
	if p.PrincipalOrgID != "" && r.OrgID != p.PrincipalOrgID {
		return false
	}
	if p.SourceArn != "" && !like(p.SourceArn, r.SourceArn) {
		return false
	}
	if p.SourceAccount != "" && !strings.Contains(r.SourceArn, ":"+p.SourceAccount+":") {
		return false
	}
	if p.FunctionURLAuthType != "" && (!r.ViaURL || r.URLAuthType != p.FunctionURLAuthType || r.Action != "lambda:InvokeFunctionUrl") {
		return false
	}
	if p.InvokedViaFunctionURL && !r.ViaURL {
		return false
	}
	return true
}

// like is IAM's StringLike: * any run, ? one character.
func like(pattern, s string) bool {
	if pattern == "" {
		return s == ""
	}
	switch pattern[0] {
	case '*':
		for i := 0; i <= len(s); i++ {
			if like(pattern[1:], s[i:]) {
				return true
			}
		}
		return false
	case '?':
		return s != "" && like(pattern[1:], s[1:])
	}
	return s != "" && s[0] == pattern[0] && like(pattern[1:], s[1:])
}

// translateScript runs SAM's translator on the template, as `sam deploy`
// does server-side, with local code locations replaced by S3 placeholders.
const translateScript = `
import json, sys
from samtranslator.translator.transform import transform
from cfnlint.decode import decode_str
tpl, errs = decode_str(open(sys.argv[1]).read())
if tpl is None:
    sys.exit("cannot parse template: %s" % errs)
tpl['Globals']['Function']['CodeUri'] = 's3://bucket/code.zip'
for r in tpl['Resources'].values():
    if r.get('Type') == 'AWS::Serverless::LayerVersion':
        r['Properties']['ContentUri'] = 's3://bucket/layer.zip'
class NoManagedPolicies:
    def load(self): return {}
json.dump(transform(tpl, {}, NoManagedPolicies()), sys.stdout, default=str)
`

// ErrNoTranslator: python3 with aws-sam-translator is not installed.
var ErrNoTranslator = errors.New("python3 with aws-sam-translator (installed with cfn-lint) not found")

var translation struct {
	once sync.Once
	doc  []byte
	err  error
}

// Translated returns the template as CloudFormation after SAM's transform
// (translated once per process: it takes seconds).
func Translated() (map[string]any, error) {
	translation.once.Do(func() {
		doc, err := translate()
		if err == nil {
			translation.doc, err = json.Marshal(doc)
		}
		translation.err = err
	})
	if translation.err != nil {
		return nil, translation.err
	}
	var doc map[string]any
	return doc, json.Unmarshal(translation.doc, &doc)
}

// LayerLogical is the logical id SAM gives the layer declared as name (it
// appends a content hash).
func LayerLogical(doc map[string]any, name string) string {
	res, _ := doc["Resources"].(map[string]any)
	for id, r := range res {
		rm, _ := r.(map[string]any)
		if rm["Type"] == "AWS::Lambda::LayerVersion" && strings.HasPrefix(id, name) {
			return id
		}
	}
	return name
}

func translate() (map[string]any, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		return nil, ErrNoTranslator
	}
	if exec.Command(py, "-c", "import samtranslator, cfnlint").Run() != nil {
		return nil, ErrNoTranslator
	}
	dir, err := os.MkdirTemp("", "tv-sam")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "translate.py")
	if err := os.WriteFile(script, []byte(translateScript), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(py, script, filepath.Join(root, "template.yaml"))
	cmd.Env = append(os.Environ(), "AWS_DEFAULT_REGION="+Region)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("SAM translate: %w: %s", err, stderr.String())
	}
	var doc map[string]any
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("SAM translate output: %w", err)
	}
	return doc, nil
}

// LoadResourcePolicies translates the template and returns the Lambda
// resource policies a deploy with these parameter values creates.
func LoadResourcePolicies(params map[string]string) (ResourcePolicies, error) {
	doc, err := Translated()
	if err != nil {
		return nil, err
	}
	return ResourcePoliciesOf(doc, params)
}

// ResourcePoliciesOf evaluates a translated template's conditions and
// intrinsic functions for the given parameters.
func ResourcePoliciesOf(doc map[string]any, params map[string]string) (ResourcePolicies, error) {
	ev := &evaluator{doc: doc, params: map[string]any{}, conds: map[string]bool{}}
	res, _ := doc["Resources"].(map[string]any)
	ev.res = res
	decl, _ := doc["Parameters"].(map[string]any)
	for name, d := range decl {
		dm, _ := d.(map[string]any)
		v, ok := params[name]
		if !ok {
			v = fmt.Sprint(dm["Default"])
			if dm["Default"] == nil {
				v = ""
			}
		}
		if dm["Type"] == "CommaDelimitedList" {
			ev.params[name] = toAny(strings.Split(v, ","))
			if v == "" {
				ev.params[name] = []any{""}
			}
		} else {
			ev.params[name] = v
		}
	}
	var out ResourcePolicies
	for name, r := range res {
		rm, _ := r.(map[string]any)
		typ, _ := rm["Type"].(string)
		if typ != "AWS::Lambda::Permission" && typ != "AWS::Lambda::LayerVersionPermission" {
			continue
		}
		if c, ok := rm["Condition"].(string); ok {
			on, err := ev.condition(c)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if !on {
				continue
			}
		}
		props, _ := rm["Properties"].(map[string]any)
		str := func(k string) (string, error) {
			if props[k] == nil {
				return "", nil
			}
			v, err := ev.value(props[k])
			if err != nil {
				return "", fmt.Errorf("%s.%s: %w", name, k, err)
			}
			if b, ok := v.(bool); ok {
				return fmt.Sprint(b), nil
			}
			s, ok := v.(string)
			if !ok {
				return "", fmt.Errorf("%s.%s is not a string: %v", name, k, v)
			}
			return s, nil
		}
		p := Permission{Logical: name}
		var errs []error
		for k, dst := range map[string]*string{"Action": &p.Action, "Principal": &p.Principal, "PrincipalOrgID": &p.PrincipalOrgID,
			"SourceArn": &p.SourceArn, "SourceAccount": &p.SourceAccount, "FunctionUrlAuthType": &p.FunctionURLAuthType} {
			v, err := str(k)
			errs = append(errs, err)
			*dst = v
		}
		via, err := str("InvokedViaFunctionUrl")
		errs = append(errs, err)
		p.InvokedViaFunctionURL = via == "true"
		if typ == "AWS::Lambda::LayerVersionPermission" {
			p.Resource, err = str("LayerVersionArn")
			errs = append(errs, err)
			org, err := str("OrganizationId")
			errs = append(errs, err)
			p.PrincipalOrgID = org
		} else {
			fn, err := str("FunctionName")
			errs = append(errs, err)
			if !strings.HasPrefix(fn, "arn:") {
				fn = FunctionARN(fn)
			}
			p.Resource = fn
		}
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Permission) int { return strings.Compare(a.Logical, b.Logical) })
	return out, nil
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

type evaluator struct {
	doc    map[string]any
	res    map[string]any
	params map[string]any
	conds  map[string]bool
}

func (ev *evaluator) condition(name string) (bool, error) {
	if v, ok := ev.conds[name]; ok {
		return v, nil
	}
	cs, _ := ev.doc["Conditions"].(map[string]any)
	c, ok := cs[name]
	if !ok {
		return false, fmt.Errorf("no condition %s", name)
	}
	v, err := ev.value(c)
	if err != nil {
		return false, fmt.Errorf("condition %s: %w", name, err)
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("condition %s is not a boolean", name)
	}
	ev.conds[name] = b
	return b, nil
}

func (ev *evaluator) ref(name string) (any, error) {
	switch name {
	case "AWS::Partition":
		return "aws", nil
	case "AWS::Region":
		return Region, nil
	case "AWS::AccountId":
		return VendorAccount, nil
	case "AWS::URLSuffix":
		return "amazonaws.com", nil
	case "AWS::StackName":
		return "token-vendor", nil
	}
	if v, ok := ev.params[name]; ok {
		return v, nil
	}
	r, ok := ev.res[name].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("a Ref to unknown %s", name)
	}
	switch r["Type"] {
	case "AWS::ApiGatewayV2::Api":
		return HttpApiID, nil
	case "AWS::Lambda::LayerVersion":
		return LayerARN(name), nil
	}
	return name, nil // a function's Ref is its name
}

func (ev *evaluator) getAtt(target, attr string) (any, error) {
	r, ok := ev.res[target].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("GetAtt of unknown %s", target)
	}
	if r["Type"] == "AWS::Lambda::Function" && attr == "Arn" {
		return FunctionARN(target), nil
	}
	return "arn:aws:resource:" + Region + ":" + VendorAccount + ":" + target + "/" + attr, nil
}

// value resolves the intrinsic functions a policy property may use.
func (ev *evaluator) value(v any) (any, error) {
	switch x := v.(type) {
	case string, bool, float64:
		return x, nil
	case []any:
		out := make([]any, 0, len(x))
		for _, e := range x {
			r, err := ev.value(e)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
		return out, nil
	case map[string]any:
		if len(x) == 1 {
			for fn, arg := range x {
				if fn == "Ref" || fn == "Condition" || strings.HasPrefix(fn, "Fn::") {
					return ev.intrinsic(fn, arg)
				}
			}
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			r, err := ev.value(e)
			if err != nil {
				return nil, err
			}
			out[k] = r
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected value %v", v)
}

func (ev *evaluator) intrinsic(fn string, arg any) (any, error) {
	args, _ := arg.([]any)
	vals := func() ([]any, error) {
		r, err := ev.value(arg)
		if err != nil {
			return nil, err
		}
		l, _ := r.([]any)
		return l, nil
	}
	switch fn {
	case "Ref":
		return ev.ref(fmt.Sprint(arg))
	case "Condition":
		return ev.condition(fmt.Sprint(arg))
	case "Fn::GetAtt":
		if s, ok := arg.(string); ok {
			args = toAny(strings.SplitN(s, ".", 2))
		}
		if len(args) != 2 {
			return nil, fmt.Errorf("Fn::GetAtt %v", arg)
		}
		return ev.getAtt(fmt.Sprint(args[0]), fmt.Sprint(args[1]))
	case "Fn::Equals":
		l, err := vals()
		if err != nil || len(l) != 2 {
			return nil, fmt.Errorf("Fn::Equals %v: %v", arg, err)
		}
		return fmt.Sprint(l[0]) == fmt.Sprint(l[1]), nil
	case "Fn::Not", "Fn::And", "Fn::Or":
		l, err := vals()
		if err != nil {
			return nil, err
		}
		acc := fn == "Fn::And"
		for _, e := range l {
			b, ok := e.(bool)
			if !ok {
				return nil, fmt.Errorf("%s of a non-boolean", fn)
			}
			switch fn {
			case "Fn::Not":
				return !b, nil
			case "Fn::And":
				acc = acc && b
			case "Fn::Or":
				acc = acc || b
			}
		}
		return acc, nil
	case "Fn::If":
		if len(args) != 3 {
			return nil, fmt.Errorf("Fn::If %v", arg)
		}
		b, err := ev.condition(fmt.Sprint(args[0]))
		if err != nil {
			return nil, err
		}
		if b {
			return ev.value(args[1])
		}
		return ev.value(args[2])
	case "Fn::Join":
		l, err := vals()
		if err != nil || len(l) != 2 {
			return nil, fmt.Errorf("Fn::Join %v: %v", arg, err)
		}
		parts, _ := l[1].([]any)
		ss := make([]string, len(parts))
		for i, p := range parts {
			ss[i] = fmt.Sprint(p)
		}
		return strings.Join(ss, fmt.Sprint(l[0])), nil
	case "Fn::Split":
		l, err := vals()
		if err != nil || len(l) != 2 {
			return nil, fmt.Errorf("Fn::Split %v: %v", arg, err)
		}
		return toAny(strings.Split(fmt.Sprint(l[1]), fmt.Sprint(l[0]))), nil
	case "Fn::Select":
		l, err := vals()
		if err != nil || len(l) != 2 {
			return nil, fmt.Errorf("Fn::Select %v: %v", arg, err)
		}
		var i int
		fmt.Sscan(fmt.Sprint(l[0]), &i)
		list, _ := l[1].([]any)
		if i < 0 || i >= len(list) {
			return nil, fmt.Errorf("Fn::Select index %d out of range (the deploy would fail)", i)
		}
		return list[i], nil
	case "Fn::Sub":
		tmpl, vars := "", map[string]any{}
		if s, ok := arg.(string); ok {
			tmpl = s
		} else if len(args) == 2 {
			tmpl = fmt.Sprint(args[0])
			m, _ := args[1].(map[string]any)
			for k, e := range m {
				r, err := ev.value(e)
				if err != nil {
					return nil, err
				}
				vars[k] = r
			}
		}
		var b strings.Builder
		for {
			i := strings.Index(tmpl, "${")
			if i < 0 {
				b.WriteString(tmpl)
				break
			}
			j := strings.Index(tmpl[i:], "}")
			if j < 0 {
				return nil, fmt.Errorf("Fn::Sub %q", tmpl)
			}
			b.WriteString(tmpl[:i])
			name := tmpl[i+2 : i+j]
			var r any
			var err error
			if v, ok := vars[name]; ok {
				r = v
			} else if t, a, ok := strings.Cut(name, "."); ok {
				r, err = ev.getAtt(t, a)
			} else {
				r, err = ev.ref(name)
			}
			if err != nil {
				return nil, err
			}
			b.WriteString(fmt.Sprint(r))
			tmpl = tmpl[i+j+1:]
		}
		return b.String(), nil
	}
	return nil, fmt.Errorf("unsupported intrinsic %s", fn)
}

// IdentityStatement is one statement of an identity-side policy (identity
// policy, permissions boundary, SCP) the evaluator understands: actions and
// resources with wildcards, and Bool / BoolIfExists on
// lambda:InvokedViaFunctionUrl.
type IdentityStatement struct {
	Effect    string
	Action    any
	Resource  any
	Condition map[string]map[string]any
}

// IdentityDecision evaluates one principal's own call in the vendor's
// account: allowed if some identity statement allows it, no guard statement
// (SCP, boundary or ApiInvokeGuardPolicy, all Deny-only here) denies it,
// and every boundary (when one is set) allows it.
func IdentityDecision(identity, guards []IdentityStatement, r Request) bool {
	allowed := false
	for _, st := range identity {
		if st.matches(r) {
			if st.Effect == "Deny" {
				return false
			}
			allowed = true
		}
	}
	for _, st := range guards {
		if st.Effect == "Deny" && st.matches(r) {
			return false
		}
	}
	return allowed
}

func (st IdentityStatement) matches(r Request) bool {
	if !slices.ContainsFunc(listOf(st.Action), func(a string) bool { return like(a, r.Action) }) {
		return false
	}
	if !slices.ContainsFunc(listOf(st.Resource), func(p string) bool { return like(p, r.Resource) }) {
		return false
	}
	for op, kv := range st.Condition {
		for k, want := range kv {
			if k != "lambda:InvokedViaFunctionUrl" || (op != "Bool" && op != "BoolIfExists") {
				return false // a condition this evaluator does not know never matches
			}
			present := r.ViaURL // the key is in the request context of a URL invoke
			if !present {
				if op == "BoolIfExists" {
					continue
				}
				return false
			}
			if fmt.Sprint(want) != "true" {
				return false
			}
		}
	}
	return true
}

func listOf(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			out = append(out, fmt.Sprint(e))
		}
		return out
	case []string:
		return x
	}
	return nil
}

// TemplateGuard returns the statements of the template's
// ApiInvokeGuardPolicy, resolved as for a deploy.
func TemplateGuard(doc map[string]any) ([]IdentityStatement, error) {
	ev := &evaluator{doc: doc, params: map[string]any{}, conds: map[string]bool{}}
	ev.res, _ = doc["Resources"].(map[string]any)
	r, _ := ev.res["ApiInvokeGuardPolicy"].(map[string]any)
	props, _ := r["Properties"].(map[string]any)
	pd, _ := props["PolicyDocument"].(map[string]any)
	raw, err := ev.value(pd["Statement"])
	if err != nil {
		return nil, fmt.Errorf("ApiInvokeGuardPolicy: %w", err)
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, err
	}
	var out []IdentityStatement
	if err := json.Unmarshal(b, &out); err != nil || len(out) == 0 {
		return nil, fmt.Errorf("ApiInvokeGuardPolicy has no statements: %v", err)
	}
	return out, nil
}
