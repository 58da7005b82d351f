package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

const (
	envChild   = "TV_FLEET_CHILD"
	envTable   = "TV_FLEET_TABLE"
	envDefs    = "TV_FLEET_DEFS"
	envLeaseMS = "TV_FLEET_LEASE_MS"
)

// command is what the parent sends a fleet instance, one JSON line each.
type command struct {
	Provider    string `json:"provider"`
	Callers     int    `json:"callers"`
	OffsetS     int64  `json:"offset_s"`      // the instance clock's offset from the wall clock
	StartUnixMS int64  `json:"start_unix_ms"` // all instances start callers at this instant
}

// report is what an instance answers: token digests and errors, never tokens.
type report struct {
	Tokens    map[string]int `json:"tokens"`
	Errors    []string       `json:"errors"`
	MaxWaitMS int64          `json:"max_wait_ms"`
}

func runChild() int {
	ctx := context.Background()
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load()) * time.Second) }
	raw, err := os.ReadFile(os.Getenv(envDefs))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var rawDefs map[string]json.RawMessage
	if err := json.Unmarshal(raw, &rawDefs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defs := map[string]*provider.Definition{}
	for name, r := range rawDefs {
		d, err := provider.Parse(name, r)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defs[name] = d
	}
	lease, _ := strconv.Atoi(os.Getenv(envLeaseMS))
	st := dynamostore.New(testenv.DynamoDBClient(os.Getenv(testenv.EnvDynamoDB)), os.Getenv(envTable))
	up := &upstream.Client{Now: now, AttemptTimeout: 2 * time.Second, MaxRetryAfter: -1, BaseBackoff: 10 * time.Millisecond}
	v := vend.New(vendtest.NewProviders(defs), up, st, vend.Options{Now: now, LeaseDuration: time.Duration(lease) * time.Millisecond, DisableRefreshAhead: true})

	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var cmd command
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		offset.Store(cmd.OffsetS)
		time.Sleep(time.Until(time.UnixMilli(cmd.StartUnixMS)))
		rep := report{Tokens: map[string]int{}}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := 0; i < cmd.Callers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				tok, err := v.Token(ctx, vend.Request{Provider: cmd.Provider, MinTTL: -1})
				wait := time.Since(start).Milliseconds()
				mu.Lock()
				defer mu.Unlock()
				rep.MaxWaitMS = max(rep.MaxWaitMS, wait)
				if err != nil {
					rep.Errors = append(rep.Errors, err.Error())
					return
				}
				sum := sha256.Sum256([]byte(tok.AccessToken))
				rep.Tokens[hex.EncodeToString(sum[:8])]++
			}()
		}
		wg.Wait()
		if err := out.Encode(rep); err != nil {
			return 1
		}
	}
	return 0
}

// instance is one fleet member: a separate OS process.
type instance struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startFleet(t *testing.T, n int, table string, defs map[string]*provider.Definition, lease time.Duration) []*instance {
	t.Helper()
	raw := map[string]*provider.Definition{}
	for k, v := range defs {
		raw[k] = v
	}
	b, _ := json.Marshal(raw)
	path := t.TempDir() + "/defs.json"
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var fleet []*instance
	for i := 0; i < n; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envChild+"=1", envTable+"="+table, envDefs+"="+path, envLeaseMS+"="+strconv.Itoa(int(lease.Milliseconds())))
		cmd.Stderr = os.Stderr
		in, _ := cmd.StdinPipe()
		outp, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		inst := &instance{cmd: cmd, in: in, out: bufio.NewScanner(outp)}
		inst.out.Buffer(make([]byte, 1<<20), 1<<20)
		fleet = append(fleet, inst)
		t.Cleanup(func() {
			in.Close()
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	return fleet
}

func (in *instance) send(t *testing.T, c command) {
	t.Helper()
	b, _ := json.Marshal(c)
	if _, err := in.in.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
}

func (in *instance) read(t *testing.T) report {
	t.Helper()
	if !in.out.Scan() {
		t.Fatalf("instance exited: %v", in.out.Err())
	}
	var r report
	if err := json.Unmarshal(in.out.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestFleetStampedeOneUpstreamRequest: 8 OS processes × 50 goroutines on a
// cold cache ask at once; the provider sees one request and everyone gets
// the same token. 20 rounds, each after the previous round's token expired.
func TestFleetStampedeOneUpstreamRequest(t *testing.T) {
	ep := testenv.DynamoDB(t)
	table := testenv.NewTable(t, ep)
	up := vendtest.NewUpstream(t)
	const procs, callers, rounds = 8, 50, 20
	fleet := startFleet(t, procs, table, up.Defs, 10*time.Second)
	for round := 1; round <= rounds; round++ {
		before := up.Server.Requests("demo-k2-client")
		cmd := command{Provider: "demo-k2", Callers: callers, OffsetS: int64(round) * 7200, StartUnixMS: time.Now().Add(300 * time.Millisecond).UnixMilli()}
		for _, in := range fleet {
			in.send(t, cmd)
		}
		tokens := map[string]int{}
		for _, in := range fleet {
			r := in.read(t)
			if len(r.Errors) > 0 {
				t.Fatalf("round %d: caller errors: %v", round, r.Errors[0])
			}
			for k, n := range r.Tokens {
				tokens[k] += n
			}
		}
		got := up.Server.Requests("demo-k2-client") - before
		if got != 1 || len(tokens) != 1 {
			t.Fatalf("round %d: %d upstream requests, %d distinct tokens across the fleet", round, got, len(tokens))
		}
		for _, n := range tokens {
			if n != procs*callers {
				t.Fatalf("round %d: %d of %d callers got the token", round, n, procs*callers)
			}
		}
	}
}

// TestLeaseHolderKilledMidFetch: the instance holding the lease is killed
// with SIGKILL while its upstream request is in flight; the others get a
// token within lease + 1 s with exactly one more upstream request.
func TestLeaseHolderKilledMidFetch(t *testing.T) {
	ep := testenv.DynamoDB(t)
	table := testenv.NewTable(t, ep)
	up := vendtest.NewUpstream(t)
	const lease = 2 * time.Second
	fleet := startFleet(t, 3, table, up.Defs, lease)
	up.Server.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Delay: time.Minute, Times: 1})
	fleet[0].send(t, command{Provider: "demo-k2", Callers: 5, StartUnixMS: time.Now().UnixMilli()})
	deadline := time.Now().Add(10 * time.Second)
	for up.Server.Requests("demo-k2-client") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("holder never called the provider")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := fleet[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, in := range fleet[1:] {
		in.send(t, command{Provider: "demo-k2", Callers: 20, StartUnixMS: start.UnixMilli()})
	}
	tokens := map[string]int{}
	for _, in := range fleet[1:] {
		r := in.read(t)
		if len(r.Errors) > 0 {
			t.Fatalf("caller errors after the holder died: %v", r.Errors[0])
		}
		if r.MaxWaitMS > (lease + time.Second).Milliseconds() {
			t.Fatalf("a caller waited %d ms, more than lease + 1 s", r.MaxWaitMS)
		}
		for k := range r.Tokens {
			tokens[k]++
		}
	}
	if n := up.Server.Requests("demo-k2-client"); n != 2 || len(tokens) != 1 {
		t.Fatalf("upstream requests %d (want 2: the dead holder's and one take-over), distinct tokens %d", n, len(tokens))
	}
}
