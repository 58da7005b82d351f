package agent

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/token-vendor/token-vendor/pkg/agent"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// docBlocks returns the docs' fenced blocks of lang holding marker (the
// agent's examples live in docs/agent.md; testenv finds them wherever).
func docBlocks(t *testing.T, lang, marker string) []string {
	t.Helper()
	out := testenv.DocBlocks(t, lang, marker)
	if len(out) == 0 {
		t.Fatalf("the docs have no %s block with %q", lang, marker)
	}
	return out
}

// TestDocsAgentPolicy: the role policy docs/agent.md gives the task, pod or
// instance grants lambda:InvokeFunction on the vend function and nothing
// else (tests/deploy's TestREADMEPolicies checks every policy in the docs
// too).
func TestDocsAgentPolicy(t *testing.T) {
	root, _ := testenv.RepoRoot()
	b, err := os.ReadFile(filepath.Join(root, "docs", "agent.md"))
	if err != nil {
		t.Fatal(err)
	}
	var policies int
	for _, m := range regexp.MustCompile("(?s)```json\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		if !strings.Contains(m[1], `"Statement"`) {
			continue
		}
		policies++
		var doc struct {
			Version   string
			Statement []map[string]any
		}
		if err := json.Unmarshal([]byte(m[1]), &doc); err != nil {
			t.Fatal(err)
		}
		if doc.Version != "2012-10-17" || len(doc.Statement) != 1 {
			t.Fatalf("policy %+v: want one statement", doc)
		}
		st := doc.Statement[0]
		res, _ := st["Resource"].(string)
		if st["Effect"] != "Allow" || st["Action"] != "lambda:InvokeFunction" || len(st) != 3 ||
			!strings.HasPrefix(res, "arn:aws:lambda:") || !strings.Contains(res, ":function:") || !strings.Contains(res, "VendFunction") || strings.Contains(res, "*") {
			t.Fatalf("statement %v: want Allow lambda:InvokeFunction on the vend function's ARN only", st)
		}
	}
	if policies != 1 {
		t.Fatalf("%d policies in docs/agent.md, want the role's one", policies)
	}
}

// TestDocsConsumersWorkAsWritten runs docs/agent.md's Python and Node
// consumers, as written, against the real agent holding the listed role,
// with HTTP_PROXY set: each reads the agent token from the file the agent
// wrote and gets the token the agent serves, never through the proxy.
func TestDocsConsumersWorkAsWritten(t *testing.T) {
	for _, tool := range []string{"python3", "node"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.SkipOrFail(t, tool+" is needed for the docs' consumer")
		}
	}
	w := newWorld(t)
	p := w.startAgent(t, w.allowed, false)
	want := p.get(t, "/v1/tokens/payments?scope=read", p.auth())
	if want.Status != 200 {
		t.Fatalf("%+v", want)
	}
	var proxied atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		rw.Write([]byte(`{"access_token":"from-the-proxy"}`))
	}))
	defer proxy.Close()
	env := append(os.Environ(), "TOKEN_VENDOR_AGENT_ADDR="+p.Addr, "TOKEN_VENDOR_AGENT_TOKEN_FILE="+p.TokenFile,
		"HTTP_PROXY="+proxy.URL, "http_proxy="+proxy.URL, "NO_PROXY=", "no_proxy=")
	for _, c := range []struct{ lang, tool, call string }{
		{"python", "python3", "\nprint(token(\"payments\", \"read\"))\n"},
		{"js", "node", "\ntoken(\"payments\", \"read\").then(t => console.log(t), e => { console.error(e); process.exit(1); });\n"},
	} {
		code := docBlocks(t, c.lang, agent.Header)[0] + c.call
		cmd := exec.Command(c.tool, "-e", code)
		if c.tool == "python3" {
			cmd = exec.Command(c.tool, "-c", code)
		}
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want.AccessToken {
			t.Fatalf("the %s consumer: %v\n%s", c.lang, err, out)
		}
	}
	if proxied.Load() != 0 {
		t.Fatalf("%d requests went through HTTP_PROXY", proxied.Load())
	}
	if n := len(w.invoke.Calls()); n != 1 {
		t.Fatalf("%d vend invocations; the consumers must read the cached token", n)
	}
}

// TestDocsECSTaskDefinition parses the ECS task definition: an awsvpc task
// (one loopback for its containers), the agent as an essential sidecar,
// non-root, on loopback with no port mapping, a health check running the
// agent itself, the token on a task volume the application mounts read-only,
// the application starting once the agent is HEALTHY.
func TestDocsECSTaskDefinition(t *testing.T) {
	var td struct {
		NetworkMode, TaskRoleArn string
		Volumes                  []struct {
			Name string
			Host any
		}
		ContainerDefinitions []struct {
			Name, Image, User string
			Essential         bool
			Environment       []struct{ Name, Value string }
			MountPoints       []struct {
				SourceVolume, ContainerPath string
				ReadOnly                    bool
			}
			PortMappings []any
			HealthCheck  *struct {
				Command                                 []string
				Interval, Timeout, Retries, StartPeriod int
			}
			DependsOn []struct{ ContainerName, Condition string }
		}
	}
	if err := json.Unmarshal([]byte(docBlocks(t, "json", "containerDefinitions")[0]), &td); err != nil {
		t.Fatal(err)
	}
	if td.NetworkMode != "awsvpc" || !strings.Contains(td.TaskRoleArn, ":role/") || len(td.Volumes) != 1 || td.Volumes[0].Host != nil {
		t.Fatalf("task: networkMode %q, taskRoleArn %q, volumes %+v (want awsvpc, a task role, one task-scoped volume)", td.NetworkMode, td.TaskRoleArn, td.Volumes)
	}
	if len(td.ContainerDefinitions) != 2 {
		t.Fatalf("%d containers, want the agent and the app", len(td.ContainerDefinitions))
	}
	ag, app := td.ContainerDefinitions[0], td.ContainerDefinitions[1]
	env := func(vars []struct{ Name, Value string }) map[string]string {
		m := map[string]string{}
		for _, v := range vars {
			m[v.Name] = v.Value
		}
		return m
	}
	ae, pe := env(ag.Environment), env(app.Environment)
	if ag.Name != "token-vendor-agent" || !ag.Essential || ag.User == "" || ag.User == "0" || ag.User == "root" || len(ag.PortMappings) != 0 {
		t.Fatalf("agent container %+v: want essential, non-root, no port mappings", ag)
	}
	if err := agent.Loopback(ae["TOKEN_VENDOR_AGENT_ADDR"]); err != nil || pe["TOKEN_VENDOR_AGENT_ADDR"] != ae["TOKEN_VENDOR_AGENT_ADDR"] {
		t.Fatalf("addresses: agent %q, app %q: %v", ae["TOKEN_VENDOR_AGENT_ADDR"], pe["TOKEN_VENDOR_AGENT_ADDR"], err)
	}
	if !strings.Contains(ae["TOKEN_VENDOR_FUNCTION"], ":function:") || !strings.Contains(ae["TOKEN_VENDOR_FUNCTION"], "VendFunction") {
		t.Fatalf("TOKEN_VENDOR_FUNCTION %q: want the vend function's ARN", ae["TOKEN_VENDOR_FUNCTION"])
	}
	hc := ag.HealthCheck
	if hc == nil || !slices.Equal(hc.Command, []string{"CMD", "/tokenvendor-agent", "health"}) || hc.Interval < 5 || hc.Timeout < 2 || hc.Retries < 1 {
		t.Fatalf("agent health check %+v: want CMD /tokenvendor-agent health (the image has no shell)", hc)
	}
	tokenFile := ae["TOKEN_VENDOR_AGENT_TOKEN_FILE"]
	if tokenFile == "" || pe["TOKEN_VENDOR_AGENT_TOKEN_FILE"] != tokenFile {
		t.Fatalf("token file: agent %q, app %q", tokenFile, pe["TOKEN_VENDOR_AGENT_TOKEN_FILE"])
	}
	if len(ag.MountPoints) != 1 || len(app.MountPoints) != 1 || ag.MountPoints[0].SourceVolume != td.Volumes[0].Name || app.MountPoints[0].SourceVolume != td.Volumes[0].Name ||
		ag.MountPoints[0].ReadOnly || !app.MountPoints[0].ReadOnly || filepath.Dir(tokenFile) != ag.MountPoints[0].ContainerPath || filepath.Dir(tokenFile) != app.MountPoints[0].ContainerPath {
		t.Fatalf("mounts: agent %+v, app %+v: want the token's directory shared, read-only for the app", ag.MountPoints, app.MountPoints)
	}
	if len(app.DependsOn) != 1 || app.DependsOn[0].ContainerName != ag.Name || app.DependsOn[0].Condition != "HEALTHY" {
		t.Fatalf("app dependsOn %+v, want the agent HEALTHY", app.DependsOn)
	}
}

// TestDocsEKSPod parses the pod spec: the agent a native sidecar (an init
// container restarting Always), probed by the agent's own health command,
// non-root, no container ports, the token on an in-memory emptyDir the app
// mounts read-only, one loopback address for both.
func TestDocsEKSPod(t *testing.T) {
	type container struct {
		Name, Image   string
		RestartPolicy string `yaml:"restartPolicy"`
		Env           []struct{ Name, Value string }
		Ports         []any
		VolumeMounts  []struct {
			Name      string
			MountPath string `yaml:"mountPath"`
			ReadOnly  bool   `yaml:"readOnly"`
		} `yaml:"volumeMounts"`
		StartupProbe *struct {
			Exec struct{ Command []string }
		} `yaml:"startupProbe"`
		SecurityContext struct {
			RunAsUser                int64 `yaml:"runAsUser"`
			AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		} `yaml:"securityContext"`
	}
	var pod struct {
		Kind string
		Spec struct {
			ServiceAccountName string `yaml:"serviceAccountName"`
			SecurityContext    struct {
				RunAsNonRoot bool `yaml:"runAsNonRoot"`
			} `yaml:"securityContext"`
			Volumes []struct {
				Name     string
				EmptyDir *struct{ Medium string } `yaml:"emptyDir"`
			}
			InitContainers []container `yaml:"initContainers"`
			Containers     []container
		}
	}
	if err := yaml.Unmarshal([]byte(docBlocks(t, "yaml", "kind: Pod")[0]), &pod); err != nil {
		t.Fatal(err)
	}
	s := pod.Spec
	if pod.Kind != "Pod" || s.ServiceAccountName == "" || !s.SecurityContext.RunAsNonRoot || len(s.InitContainers) != 1 || len(s.Containers) != 1 {
		t.Fatalf("pod %+v", pod)
	}
	ag, app := s.InitContainers[0], s.Containers[0]
	if ag.RestartPolicy != "Always" || len(ag.Ports) != 0 || ag.SecurityContext.RunAsUser == 0 || ag.SecurityContext.AllowPrivilegeEscalation == nil || *ag.SecurityContext.AllowPrivilegeEscalation {
		t.Fatalf("agent %+v: want a native sidecar, no ports, non-root, no privilege escalation", ag)
	}
	if ag.StartupProbe == nil || !slices.Equal(ag.StartupProbe.Exec.Command, []string{"/tokenvendor-agent", "health"}) {
		t.Fatalf("agent startup probe %+v", ag.StartupProbe)
	}
	env := func(c container) map[string]string {
		m := map[string]string{}
		for _, v := range c.Env {
			m[v.Name] = v.Value
		}
		return m
	}
	ae, pe := env(ag), env(app)
	if err := agent.Loopback(ae["TOKEN_VENDOR_AGENT_ADDR"]); err != nil || pe["TOKEN_VENDOR_AGENT_ADDR"] != ae["TOKEN_VENDOR_AGENT_ADDR"] || ae["TOKEN_VENDOR_FUNCTION"] == "" {
		t.Fatalf("env: agent %v, app %v", ae, pe)
	}
	tokenFile := ae["TOKEN_VENDOR_AGENT_TOKEN_FILE"]
	if len(s.Volumes) != 1 || s.Volumes[0].EmptyDir == nil || s.Volumes[0].EmptyDir.Medium != "Memory" || pe["TOKEN_VENDOR_AGENT_TOKEN_FILE"] != tokenFile {
		t.Fatalf("volumes %+v, token files %q %q", s.Volumes, tokenFile, pe["TOKEN_VENDOR_AGENT_TOKEN_FILE"])
	}
	if len(ag.VolumeMounts) != 1 || len(app.VolumeMounts) != 1 || ag.VolumeMounts[0].Name != s.Volumes[0].Name || app.VolumeMounts[0].Name != s.Volumes[0].Name ||
		ag.VolumeMounts[0].MountPath != filepath.Dir(tokenFile) || app.VolumeMounts[0].MountPath != filepath.Dir(tokenFile) || ag.VolumeMounts[0].ReadOnly || !app.VolumeMounts[0].ReadOnly {
		t.Fatalf("mounts: agent %+v, app %+v", ag.VolumeMounts, app.VolumeMounts)
	}
}

// TestDocsSystemdUnit checks the unit's fields and has systemd-analyze
// verify it (with ExecStart pointing at the built agent): any warning fails.
func TestDocsSystemdUnit(t *testing.T) {
	unit := docBlocks(t, "ini", "[Service]")[0]
	fields := map[string][]string{}
	section := ""
	for _, line := range strings.Split(unit, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("unit line %q is not key=value", line)
		}
		fields[section+"."+k] = append(fields[section+"."+k], v)
	}
	one := func(k string) string {
		if len(fields[k]) != 1 {
			t.Fatalf("unit %s: %q, want one", k, fields[k])
		}
		return fields[k][0]
	}
	env := map[string]string{}
	for _, e := range fields["Service.Environment"] {
		k, v, _ := strings.Cut(e, "=")
		env[k] = v
	}
	if err := agent.Loopback(env["TOKEN_VENDOR_AGENT_ADDR"]); err != nil || env["TOKEN_VENDOR_FUNCTION"] == "" {
		t.Fatalf("unit environment %v: %v", env, err)
	}
	if u := one("Service.User"); u == "" || u == "root" || one("Service.ExecStart") != "/usr/local/bin/tokenvendor-agent" ||
		one("Service.KillSignal") != "SIGTERM" || one("Service.RuntimeDirectory") != "token-vendor" || one("Service.RuntimeDirectoryMode") != "0750" ||
		!strings.HasPrefix(env["TOKEN_VENDOR_AGENT_TOKEN_FILE"], "/run/token-vendor/") || one("Service.NoNewPrivileges") != "yes" || one("Install.WantedBy") != "multi-user.target" {
		t.Fatalf("unit fields %v", fields)
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: field checks only")
		return
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "tokenvendor-agent.service")
	if err := os.WriteFile(f, []byte(strings.ReplaceAll(unit, "/usr/local/bin/tokenvendor-agent", agentBinary(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", "--man=no", f).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
