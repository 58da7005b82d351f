package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

const (
	envChild    = "BENCH_CHILD"
	envApproach = "BENCH_APPROACH"
	envCallers  = "BENCH_CALLERS"
	envDefs     = "BENCH_DEFS"
	envTable    = "BENCH_TABLE"
)

var approaches = []string{"token-vendor", "x/oauth2 per process", "naive per request"}

// fleetResult is one child's answer.
type fleetResult struct {
	Errors   int `json:"errors"`
	Distinct int `json:"distinct"`
}

// child is one process of a fleet (or the bare server of the throughput run).
func child() int {
	if os.Getenv(envChild) == "bare" {
		return bareServer()
	}
	ctx := context.Background()
	raw, _ := os.ReadFile(os.Getenv(envDefs))
	defs, err := registry.ParseFile(raw)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	def := defs["demo-k2"]
	callers, _ := strconv.Atoi(os.Getenv(envCallers))
	var get func() (string, error)
	switch os.Getenv(envApproach) {
	case "token-vendor":
		st := dynamostore.New(testenv.DynamoDBClient(os.Getenv(testenv.EnvDynamoDB)), os.Getenv(envTable))
		v := vend.New(registry.NewStatic(defs), &upstream.Client{}, st, vend.Options{DisableRefreshAhead: true})
		get = func() (string, error) {
			t, err := v.Token(ctx, vend.Request{Provider: "demo-k2", MinTTL: -1})
			return t.AccessToken, err
		}
	case "x/oauth2 per process":
		ts := ccConfig(def).TokenSource(ctx) // a ReuseTokenSource
		get = func() (string, error) {
			t, err := ts.Token()
			if err != nil {
				return "", err
			}
			return t.AccessToken, nil
		}
	default:
		cc := ccConfig(def)
		get = func() (string, error) {
			t, err := cc.Token(ctx) // no reuse: a fetch per call
			if err != nil {
				return "", err
			}
			return t.AccessToken, nil
		}
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return 1
	}
	startMS, _ := strconv.ParseInt(in.Text(), 10, 64)
	time.Sleep(time.Until(time.UnixMilli(startMS)))
	var mu sync.Mutex
	res := fleetResult{}
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := get()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Errors++
				return
			}
			seen[tok] = true
		}()
	}
	wg.Wait()
	res.Distinct = len(seen)
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// ccConfig is the x/oauth2 client for a K2-style provider.
func ccConfig(def *provider.Definition) *clientcredentials.Config {
	return &clientcredentials.Config{ClientID: def.ClientID, ClientSecret: def.ClientSecret, TokenURL: def.TokenURL, AuthStyle: oauth2.AuthStyleInParams}
}

// fleetRow is upstream requests per approach for one fleet size.
type fleetRow struct {
	Procs, Callers int
	Upstream       map[string]int
	Errors         map[string]int
}

func fleetColdStart(r *report) error {
	sizes := []int{1, 2, 4, 8, 16}
	if r.quick {
		sizes = []int{1, 2}
	}
	const callers = 50
	ddb := os.Getenv(testenv.EnvDynamoDB)
	if ddb == "" {
		return fmt.Errorf("DynamoDB Local not running: %s", testenv.SkipHint)
	}
	for _, n := range sizes {
		row := fleetRow{Procs: n, Callers: callers, Upstream: map[string]int{}, Errors: map[string]int{}}
		for _, ap := range approaches {
			up, errs, err := runFleet(ap, n, callers, ddb)
			if err != nil {
				return fmt.Errorf("%s × %d: %w", ap, n, err)
			}
			row.Upstream[ap], row.Errors[ap] = up, errs
		}
		r.fleet = append(r.fleet, row)
	}
	return nil
}

func runFleet(approach string, procs, callers int, ddb string) (int, int, error) {
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	defs := sandbox.DemoProviders(sb, srv.URL)
	b, _ := json.Marshal(defs)
	f, err := os.CreateTemp("", "bench-defs-*.json")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(f.Name())
	f.Write(b)
	f.Close()
	table := "bench-" + testenv.RandomSuffix()
	if err := dynamostore.CreateTable(context.Background(), testenv.DynamoDBClient(ddb), table); err != nil {
		return 0, 0, err
	}
	self, _ := os.Executable()
	type kid struct {
		cmd *exec.Cmd
		in  *bufio.Writer
		out *bufio.Scanner
		w   interface{ Close() error }
	}
	var kids []kid
	defer func() {
		for _, k := range kids {
			k.cmd.Process.Kill()
			k.cmd.Wait()
		}
	}()
	for i := 0; i < procs; i++ {
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), envChild+"=fleet", envApproach+"="+approach, envCallers+"="+strconv.Itoa(callers), envDefs+"="+f.Name(), envTable+"="+table)
		cmd.Stderr = os.Stderr
		w, _ := cmd.StdinPipe()
		o, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			return 0, 0, err
		}
		k := kid{cmd: cmd, in: bufio.NewWriter(w), out: bufio.NewScanner(o), w: w}
		if !k.out.Scan() || k.out.Text() != "ready" {
			return 0, 0, fmt.Errorf("child did not start")
		}
		kids = append(kids, k)
	}
	start := strconv.FormatInt(time.Now().Add(200*time.Millisecond).UnixMilli(), 10)
	for _, k := range kids {
		k.in.WriteString(start + "\n")
		k.in.Flush()
	}
	errs := 0
	for _, k := range kids {
		if !k.out.Scan() {
			return 0, 0, fmt.Errorf("child died")
		}
		var res fleetResult
		json.Unmarshal(k.out.Bytes(), &res)
		errs += res.Errors
	}
	return sb.Stats().Total, errs, nil
}
