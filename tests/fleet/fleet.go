// Package fleet runs a fleet of vendor instances as separate OS processes
// (the calling binary re-executed), for tests, benchmarks and the fault
// suite. The parent sends each member JSON commands on stdin; members answer
// with JSON reports on stdout: token digests and errors, never tokens.
package fleet

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// EnvChild marks a process as a fleet member; binaries that start fleets
// call Main from TestMain or main when it is set.
const EnvChild = "TV_FLEET_CHILD"

const (
	envApproach = "TV_FLEET_APPROACH"
	envTable    = "TV_FLEET_TABLE"
	envDefs     = "TV_FLEET_DEFS"
	envLeaseMS  = "TV_FLEET_LEASE_MS"
	envEndpoint = "TV_FLEET_DYNAMODB"
)

// Approaches a member can take to get a token.
const (
	Vendor = "token-vendor"
	OAuth2 = "x/oauth2 per process" // clientcredentials' ReuseTokenSource in every process
	Naive  = "naive per request"    // a token request per call
)

// Options configure a fleet.
type Options struct {
	Approach string        // Vendor by default
	Table    string        // DynamoDB table (Vendor); endpoint from testenv.EnvDynamoDB
	DefsFile string        // providers file (registry.ParseFile format)
	Lease    time.Duration // vend lease (default 10 s)
	Endpoint string        // DynamoDB endpoint, for a fault proxy (default testenv.EnvDynamoDB)
}

// Command is one round for a member.
type Command struct {
	Provider    string `json:"provider"`
	Callers     int    `json:"callers"`
	MinTTL      int64  `json:"min_ttl"`       // seconds; a token with less left counts in BelowMinTTL
	OffsetS     int64  `json:"offset_s"`      // the member clock's offset from the wall clock
	StartUnixMS int64  `json:"start_unix_ms"` // callers start at this instant
}

// Report is a member's answer to a Command.
type Report struct {
	Tokens      map[string]int `json:"tokens"` // SHA-256 prefix -> callers
	Errors      []string       `json:"errors"`
	MaxWaitMS   int64          `json:"max_wait_ms"`
	BelowMinTTL int            `json:"below_min_ttl"`
}

// RunIfMember turns this process into a fleet member (and exits) when it
// was started as one; binaries that start fleets call it first thing in
// main or TestMain.
func RunIfMember() {
	if os.Getenv(EnvChild) != "" {
		os.Exit(Main())
	}
}

// Main runs a member until stdin closes; it returns the exit status.
func Main() int {
	ctx := context.Background()
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load()) * time.Second) }
	raw, err := os.ReadFile(os.Getenv(envDefs))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defs, err := registry.ParseFile(raw)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	lease, _ := strconv.Atoi(os.Getenv(envLeaseMS))
	var v *vend.Vendor
	sources := map[string]oauth2.TokenSource{}
	if os.Getenv(envApproach) == Vendor {
		st := dynamostore.New(testenv.DynamoDBClient(os.Getenv(envEndpoint)), os.Getenv(envTable))
		up := &upstream.Client{Now: now, AttemptTimeout: 2 * time.Second, MaxRetryAfter: -1, BaseBackoff: 10 * time.Millisecond}
		v = vend.New(registry.NewStatic(defs), up, st, vend.Options{Now: now, LeaseDuration: time.Duration(lease) * time.Millisecond, DisableRefreshAhead: true})
	}
	get := func(cmd Command) (string, time.Time, error) {
		switch os.Getenv(envApproach) {
		case Vendor:
			t, err := v.Token(ctx, vend.Request{Provider: cmd.Provider, MinTTL: time.Duration(cmd.MinTTL) * time.Second})
			return t.AccessToken, t.ExpiresAt, err
		case OAuth2:
			ts := sources[cmd.Provider]
			t, err := ts.Token()
			if err != nil {
				return "", time.Time{}, err
			}
			return t.AccessToken, t.Expiry, nil
		default:
			t, err := ccConfig(defs, cmd.Provider).Token(ctx)
			if err != nil {
				return "", time.Time{}, err
			}
			return t.AccessToken, t.Expiry, nil
		}
	}
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	fmt.Println(`{"ready":true}`)
	for in.Scan() {
		var cmd Command
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if os.Getenv(envApproach) == OAuth2 && sources[cmd.Provider] == nil {
			sources[cmd.Provider] = ccConfig(defs, cmd.Provider).TokenSource(ctx)
		}
		offset.Store(cmd.OffsetS)
		time.Sleep(time.Until(time.UnixMilli(cmd.StartUnixMS)))
		rep := Report{Tokens: map[string]int{}}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := 0; i < cmd.Callers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				tok, exp, err := get(cmd)
				wait := time.Since(start).Milliseconds()
				mu.Lock()
				defer mu.Unlock()
				rep.MaxWaitMS = max(rep.MaxWaitMS, wait)
				if err != nil {
					rep.Errors = append(rep.Errors, err.Error())
					return
				}
				if exp.Sub(now()) < time.Duration(cmd.MinTTL)*time.Second {
					rep.BelowMinTTL++
				}
				rep.Tokens[Digest(tok)]++
			}()
		}
		wg.Wait()
		if err := out.Encode(rep); err != nil {
			return 1
		}
	}
	return 0
}

// Digest names a token in reports: a SHA-256 prefix, never the token.
func Digest(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:8])
}

func ccConfig(defs map[string]*provider.Definition, name string) *clientcredentials.Config {
	d := defs[name]
	return &clientcredentials.Config{ClientID: d.ClientID, ClientSecret: d.ClientSecret, TokenURL: d.TokenURL, AuthStyle: oauth2.AuthStyleInParams}
}

// Member is one process of the fleet.
type Member struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	dead bool
}

// Fleet is a set of members.
type Fleet struct{ Members []*Member }

// Start launches n members running the calling binary.
func Start(n int, o Options) (*Fleet, error) {
	if o.Approach == "" {
		o.Approach = Vendor
	}
	if o.Lease == 0 {
		o.Lease = 10 * time.Second
	}
	if o.Endpoint == "" {
		o.Endpoint = os.Getenv(testenv.EnvDynamoDB)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	f := &Fleet{}
	for i := 0; i < n; i++ {
		cmd := exec.Command(self, "-test.run=^$")
		cmd.Env = append(os.Environ(), EnvChild+"=1", envApproach+"="+o.Approach, envTable+"="+o.Table, envDefs+"="+o.DefsFile,
			envLeaseMS+"="+strconv.FormatInt(o.Lease.Milliseconds(), 10), envEndpoint+"="+o.Endpoint)
		cmd.Stderr = os.Stderr
		in, _ := cmd.StdinPipe()
		outp, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			f.Close()
			return nil, err
		}
		m := &Member{cmd: cmd, in: in, out: bufio.NewScanner(outp)}
		m.out.Buffer(make([]byte, 1<<20), 1<<20)
		f.Members = append(f.Members, m)
		if !m.out.Scan() {
			f.Close()
			return nil, errors.New("fleet member did not start")
		}
	}
	return f, nil
}

// Send gives a member a command.
func (m *Member) Send(c Command) error {
	b, _ := json.Marshal(c)
	_, err := m.in.Write(append(b, '\n'))
	return err
}

// Read waits for a member's report.
func (m *Member) Read() (Report, error) {
	if !m.out.Scan() {
		return Report{}, fmt.Errorf("fleet member exited: %v", m.out.Err())
	}
	var r Report
	err := json.Unmarshal(m.out.Bytes(), &r)
	return r, err
}

// Kill sends SIGKILL: no cleanup, no lease release.
func (m *Member) Kill() error {
	m.dead = true
	return m.cmd.Process.Signal(syscall.SIGKILL)
}

// Stop freezes the member with SIGSTOP, as Lambda freezes an instance or a
// long GC pause stalls one; Cont resumes it.
func (m *Member) Stop() error { return m.cmd.Process.Signal(syscall.SIGSTOP) }

// Cont resumes a stopped member.
func (m *Member) Cont() error { return m.cmd.Process.Signal(syscall.SIGCONT) }

// Round sends c to every live member (starting together shortly) and
// merges their reports.
func (f *Fleet) Round(c Command) (Report, error) {
	return f.RoundEach(func(int) Command { return c })
}

// RoundEach is Round with a command per member (index among all members),
// for instance to give each its own clock offset.
func (f *Fleet) RoundEach(mk func(i int) Command) (Report, error) {
	start := time.Now().Add(300 * time.Millisecond).UnixMilli()
	var live []*Member
	for i, m := range f.Members {
		if !m.dead {
			c := mk(i)
			if c.StartUnixMS == 0 {
				c.StartUnixMS = start
			}
			live = append(live, m)
			if err := m.Send(c); err != nil {
				return Report{}, err
			}
		}
	}
	all := Report{Tokens: map[string]int{}}
	for _, m := range live {
		r, err := m.Read()
		if err != nil {
			return all, err
		}
		for k, n := range r.Tokens {
			all.Tokens[k] += n
		}
		all.Errors = append(all.Errors, r.Errors...)
		all.MaxWaitMS = max(all.MaxWaitMS, r.MaxWaitMS)
		all.BelowMinTTL += r.BelowMinTTL
	}
	return all, nil
}

// Close stops every member.
func (f *Fleet) Close() {
	for _, m := range f.Members {
		m.in.Close()
		_ = m.cmd.Process.Kill()
		_ = m.cmd.Wait()
	}
}

// WriteDefs writes definitions to a providers file in dir for members.
func WriteDefs(dir string, defs map[string]*provider.Definition) (string, error) {
	b, err := json.Marshal(defs)
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, "fleet-defs-*.json")
	if err != nil {
		return "", err
	}
	defer f.Close()
	_, err = f.Write(b)
	return f.Name(), err
}
