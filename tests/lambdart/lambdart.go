// Package lambdart runs the real bootstraps as Lambda runs them: built by
// the Makefile's build-<LogicalId> targets (for the host), started with the
// environment template.yaml gives them, and driven through a Lambda Runtime
// API served here. Between invocations the process is frozen with SIGSTOP,
// as Lambda freezes it, so work left running after a response shows.
package lambdart

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

// Build builds the function the way `sam build` does, for the host
// architecture, and returns the bootstrap's path.
func Build(logicalID, dir string) (string, error) {
	out, err := makeTarget(logicalID, dir, "LAMBDA_ARCH")
	return filepath.Join(out, "bootstrap"), err
}

// makeTarget runs make build-<logicalID> as sam build does, into
// dir/<logicalID>, with archVar set to the host's architecture.
func makeTarget(logicalID, dir, archVar string) (string, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, logicalID)
	cmd := exec.Command("make", "-s", "build-"+logicalID, "ARTIFACTS_DIR="+out, archVar+"="+runtime.GOARCH)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("make build-%s: %v\n%s", logicalID, err, b)
	}
	return out, nil
}

// TemplateEnv is the environment template.yaml gives a function (Globals
// merged with the function's own), with intrinsics resolved: !Ref to a
// parameter takes its default unless refs names it, !Ref/!GetAtt to a
// resource takes refs[name] (or refs["X.Arn"]), and !If evaluates the
// template's conditions on parameter defaults.
func TemplateEnv(logicalID string, refs map[string]string) (map[string]string, error) {
	root, err := LoadTemplate()
	if err != nil {
		return nil, err
	}
	t := &tmpl{root: root, refs: refs}
	env := map[string]string{}
	for _, vars := range []*yaml.Node{
		Get(t.root, "Globals", "Function", "Environment", "Variables"),
		Get(t.root, "Resources", logicalID, "Properties", "Environment", "Variables"),
	} {
		if vars == nil {
			continue
		}
		for i := 0; i+1 < len(vars.Content); i += 2 {
			v, err := t.resolve(vars.Content[i+1])
			if err != nil {
				return nil, fmt.Errorf("%s: %w", vars.Content[i].Value, err)
			}
			env[vars.Content[i].Value] = v
		}
	}
	if Get(t.root, "Resources", logicalID) == nil {
		return nil, fmt.Errorf("no resource %s in template.yaml", logicalID)
	}
	return env, nil
}

// pseudo are the pseudo parameters, as moto's default account has them.
var pseudo = map[string]string{"AWS::AccountId": "123456789012", "AWS::Region": "us-east-1", "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}

type tmpl struct {
	root *yaml.Node
	refs map[string]string
}

func (t *tmpl) resolve(n *yaml.Node) (string, error) {
	switch n.Tag {
	case "!Ref":
		if v, ok := t.refs[n.Value]; ok {
			return v, nil
		}
		if v, ok := pseudo[n.Value]; ok {
			return v, nil
		}
		if p := Get(t.root, "Parameters", n.Value); p != nil {
			if d := Get(p, "Default"); d != nil {
				return d.Value, nil
			}
		}
		return "", fmt.Errorf("unresolved !Ref %s", n.Value)
	case "!GetAtt":
		if v, ok := t.refs[n.Value]; ok {
			return v, nil
		}
		return "", fmt.Errorf("unresolved !GetAtt %s", n.Value)
	case "!Join":
		// [delimiter, list]: the list a sequence or a !Ref to a
		// CommaDelimitedList parameter (its value already comma-joined).
		if len(n.Content) != 2 {
			return "", fmt.Errorf("!Join at line %d: want [delimiter, list]", n.Line)
		}
		list := n.Content[1]
		if list.Kind != yaml.SequenceNode {
			v, err := t.resolve(list)
			return strings.ReplaceAll(v, ",", n.Content[0].Value), err
		}
		parts := make([]string, len(list.Content))
		for i, item := range list.Content {
			v, err := t.resolve(item)
			if err != nil {
				return "", err
			}
			parts[i] = v
		}
		return strings.Join(parts, n.Content[0].Value), nil
	case "!If":
		ok, err := t.condition(n.Content[0].Value)
		if err != nil {
			return "", err
		}
		if ok {
			return t.resolve(n.Content[1])
		}
		return t.resolve(n.Content[2])
	}
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("unsupported value at line %d", n.Line)
	}
	return n.Value, nil
}

// condition evaluates the !Equals / !Not conditions the template uses.
func (t *tmpl) condition(name string) (bool, error) {
	c := Get(t.root, "Conditions", name)
	if c == nil {
		return false, fmt.Errorf("no condition %s", name)
	}
	var eval func(n *yaml.Node) (bool, error)
	eval = func(n *yaml.Node) (bool, error) {
		switch n.Tag {
		case "!Equals":
			a, err := t.resolve(n.Content[0])
			if err != nil {
				return false, err
			}
			b, err := t.resolve(n.Content[1])
			return a == b, err
		case "!Not":
			v, err := eval(n.Content[0])
			return !v, err
		}
		return false, fmt.Errorf("unsupported condition %s", n.Tag)
	}
	return eval(c)
}

// LoadTemplate parses the repository's template.yaml and returns its root mapping.
func LoadTemplate() (*yaml.Node, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(root, "template.yaml"))
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	return doc.Content[0], nil
}

// Scalars lists every scalar under n, depth first (nil for nil).
func Scalars(n *yaml.Node) []string {
	if n == nil {
		return nil
	}
	if n.Kind == yaml.ScalarNode {
		return []string{n.Value}
	}
	var out []string
	for _, c := range n.Content {
		out = append(out, Scalars(c)...)
	}
	return out
}

// Get walks mapping keys; nil where a key is missing.
func Get(n *yaml.Node, path ...string) *yaml.Node {
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

// Timeout is the function's Timeout in template.yaml (Globals, or its own).
func Timeout(logicalID string) (time.Duration, error) {
	root, err := LoadTemplate()
	if err != nil {
		return 0, err
	}
	n := Get(root, "Resources", logicalID, "Properties", "Timeout")
	if n == nil {
		n = Get(root, "Globals", "Function", "Timeout")
	}
	if n == nil {
		return 3 * time.Second, nil // Lambda's default
	}
	secs, err := time.ParseDuration(n.Value + "s")
	return secs, err
}

// Invocation is one event and what the function answered.
type Invocation struct {
	RequestID  string
	Payload    []byte // the response, or the error document
	ErrorType  string // set when the function reported an error
	Start, End time.Time
}

// Function is a running bootstrap behind a Runtime API: an execution
// environment without extensions.
type Function = Env

type pending struct {
	id      string
	event   []byte
	start   time.Time
	timeout time.Duration
	done    chan Invocation
}

// Start runs bootstrap with env (plus what Lambda itself sets) against a
// Runtime API on a loopback port, and waits for its first poll.
func Start(name, bootstrap string, env map[string]string) (*Function, error) {
	return StartEnv(name, []string{bootstrap}, nil, env)
}

// Metric is one (namespace, metric, dimension set) CloudWatch would create
// from an EMF document, with the values it received.
type Metric struct {
	Namespace, Name string
	Dimensions      string // "Name=Value,…" sorted; "" for none
}

// EMF parses the EMF documents in output into datapoints: the sum of the
// values each metric received.
func EMF(output string) map[Metric]float64 { return emf(output, "Sum") }

// EMFMax is EMF with each metric's largest value (CloudWatch's Maximum).
func EMFMax(output string) map[Metric]float64 { return emf(output, "Maximum") }

func emf(output, stat string) map[Metric]float64 {
	out := map[Metric]float64{}
	for _, line := range strings.Split(output, "\n") {
		if !strings.Contains(line, `"_aws"`) {
			continue
		}
		var doc map[string]json.RawMessage
		if json.Unmarshal([]byte(line), &doc) != nil {
			continue
		}
		var meta struct {
			CloudWatchMetrics []struct {
				Namespace  string
				Dimensions [][]string
				Metrics    []struct{ Name string }
			}
		}
		if json.Unmarshal(doc["_aws"], &meta) != nil {
			continue
		}
		for _, d := range meta.CloudWatchMetrics {
			for _, m := range d.Metrics {
				sum := sumValues(doc[m.Name])
				if stat == "Maximum" {
					sum = maxValue(doc[m.Name])
				}
				for _, set := range d.Dimensions {
					var parts []string
					for _, k := range set {
						var v string
						json.Unmarshal(doc[k], &v)
						parts = append(parts, k+"="+v)
					}
					slices.Sort(parts)
					k := Metric{d.Namespace, m.Name, strings.Join(parts, ",")}
					if stat == "Maximum" {
						out[k] = max(out[k], sum)
					} else {
						out[k] += sum
					}
				}
			}
		}
	}
	return out
}

func maxValue(raw json.RawMessage) float64 {
	return fold(raw, func(a, b float64) float64 { return max(a, b) })
}

func sumValues(raw json.RawMessage) float64 {
	return fold(raw, func(a, b float64) float64 { return a + b })
}

// fold combines an EMF value: one number, or an array of them.
func fold(raw json.RawMessage, f func(a, b float64) float64) float64 {
	var one float64
	if json.Unmarshal(raw, &one) == nil {
		return one
	}
	var many []float64
	json.Unmarshal(raw, &many)
	acc := 0.0
	for _, v := range many {
		acc = f(acc, v)
	}
	return acc
}
