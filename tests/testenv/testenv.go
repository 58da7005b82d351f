// Package testenv starts the real parts the tests run against — Amazon's
// DynamoDB Local and moto in server mode — on free loopback ports, and gives
// tests clients for them. Processes are stopped by their own PIDs.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
)

// Environment variables shared between the emulator wrapper and the tests.
const (
	EnvDynamoDB = "TV_TEST_DYNAMODB_ENDPOINT"
	EnvMoto     = "TV_TEST_MOTO_ENDPOINT"
	EnvDDBDir   = "TV_DYNAMODB_LOCAL_DIR"
	// EnvRequire turns "emulator missing" from a skip into a failure; the
	// emulator wrapper sets it, so `make test` never counts a skip as a pass.
	EnvRequire = "TV_REQUIRE_EMULATORS"
)

// DynamoDBLocalPackage is the npm package that ships Amazon's DynamoDB Local jar.
const DynamoDBLocalPackage = "amplify-dynamodb-simulator@2.9.30"

// SkipHint is what tests say when the emulators are not running.
const SkipHint = "run `make test` (it starts DynamoDB Local and moto) or `go run ./tests/emulators -- go test ./...`"

// Process is a server started for tests.
type Process struct {
	Name     string
	Endpoint string
	cmd      *exec.Cmd
	done     chan struct{}
}

// Stop kills the process by its PID and waits for it.
func (p *Process) Stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) // its process group: java or python children too
	_ = p.cmd.Process.Kill()
	<-p.done
}

// RepoRoot finds the directory holding go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// DynamoDBLocalDir returns the directory holding DynamoDBLocal.jar, installing
// it from the npm registry into .cache/ the first time.
func DynamoDBLocalDir() (string, error) {
	if d := os.Getenv(EnvDDBDir); d != "" {
		return d, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, ".cache", "dynamodb-local")
	if _, err := os.Stat(filepath.Join(dir, "DynamoDBLocal.jar")); err == nil {
		return dir, nil
	}
	tmp, err := os.MkdirTemp(filepath.Join(root, ".cache"), "npm-")
	if err != nil {
		if err := os.MkdirAll(filepath.Join(root, ".cache"), 0o755); err != nil {
			return "", err
		}
		if tmp, err = os.MkdirTemp(filepath.Join(root, ".cache"), "npm-"); err != nil {
			return "", err
		}
	}
	defer os.RemoveAll(tmp)
	pack := exec.Command("npm", "pack", "--silent", DynamoDBLocalPackage)
	pack.Dir = tmp
	out, err := pack.Output()
	if err != nil {
		return "", fmt.Errorf("npm pack %s: %w", DynamoDBLocalPackage, err)
	}
	tgz := strings.TrimSpace(string(out))
	if err := exec.Command("tar", "-xzf", filepath.Join(tmp, tgz), "-C", tmp).Run(); err != nil {
		return "", fmt.Errorf("unpack %s: %w", tgz, err)
	}
	if err := os.Rename(filepath.Join(tmp, "package", "emulator"), dir); err != nil {
		return "", err
	}
	return dir, nil
}

// FreePort asks the kernel for an unused loopback port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func start(name string, cmd *exec.Cmd, endpoint, probe string, method string) (*Process, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logf, _ := os.CreateTemp("", "tv-"+name+"-*.log")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, Endpoint: endpoint, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(method, endpoint+probe, strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited during start-up; see %s", name, logf.Name())
		case <-time.After(100 * time.Millisecond):
		}
	}
	p.Stop()
	return nil, fmt.Errorf("%s did not answer within 60 s; see %s", name, logf.Name())
}

// StartDynamoDBLocal runs DynamoDB Local in memory on a free port.
func StartDynamoDBLocal(dir string) (*Process, error) {
	return StartDynamoDBLocalOn(dir, 0)
}

// StartDynamoDBLocalOn runs DynamoDB Local on port (0: any free one), so a
// test can stop it and start it again at the same address.
func StartDynamoDBLocalOn(dir string, port int) (*Process, error) {
	if port == 0 {
		var err error
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command("java", "-Djava.library.path="+filepath.Join(dir, "DynamoDBLocal_lib"), "-Xmx512m",
		"-jar", filepath.Join(dir, "DynamoDBLocal.jar"), "-inMemory", "-disableTelemetry", "-port", fmt.Sprint(port))
	cmd.Dir = dir
	return start("dynamodb-local", cmd, fmt.Sprintf("http://127.0.0.1:%d", port), "/", http.MethodPost)
}

// StartMoto runs moto_server on a free loopback port.
func StartMoto() (*Process, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("moto_server", "-H", "127.0.0.1", "-p", fmt.Sprint(port))
	return start("moto", cmd, fmt.Sprintf("http://127.0.0.1:%d", port), "/moto-api/", http.MethodGet)
}

// Config returns an AWS config with static test credentials.
func Config() aws.Config {
	return aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
	}
}

// DynamoDBClient returns a client for endpoint. DynamoDB Local omits a
// checksum header on 4xx answers, so validation is off for test clients only.
func DynamoDBClient(endpoint string) *dynamodb.Client {
	return dynamodb.NewFromConfig(Config(), func(o *dynamodb.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.DisableValidateResponseChecksum = true
	})
}

// DynamoDBEndpoint is the shared DynamoDB Local endpoint, for programs
// (bench, reliability) that are not tests.
func DynamoDBEndpoint() (string, error) { return endpoint(EnvDynamoDB, "DynamoDB Local") }

// MotoEndpoint is the shared moto endpoint, for programs that are not tests.
func MotoEndpoint() (string, error) { return endpoint(EnvMoto, "moto") }

func endpoint(env, name string) (string, error) {
	if ep := os.Getenv(env); ep != "" {
		return ep, nil
	}
	return "", fmt.Errorf("%s is not running: %s", name, SkipHint)
}

// DynamoDB returns the shared DynamoDB Local endpoint, or skips the test.
func DynamoDB(t testing.TB) string {
	t.Helper()
	ep, err := DynamoDBEndpoint()
	if err != nil {
		SkipOrFail(t, err.Error())
	}
	return ep
}

// Moto returns the shared moto endpoint, or skips the test.
func Moto(t testing.TB) string {
	t.Helper()
	ep, err := MotoEndpoint()
	if err != nil {
		SkipOrFail(t, err.Error())
	}
	return ep
}

// NewTable creates a fresh token table on endpoint and returns its name.
func NewTable(t testing.TB, endpoint string) string {
	t.Helper()
	name := "tokens-" + RandomSuffix()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := dynamostore.CreateTable(ctx, DynamoDBClient(endpoint), name); err != nil {
		t.Fatal(err)
	}
	return name
}

// RandomSuffix returns 8 random hex characters.
func RandomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// SkipOrFail skips the test, or fails it when the run requires every
// real part (make test), so a skip is never counted as a pass there.
func SkipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv(EnvRequire) != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
