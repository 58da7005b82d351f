package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

type throughputResult struct {
	Workers, Requests  int
	VendorRPS, BareRPS []float64 // one per round, interleaved
	BodyBytes          int
}

const envBody = "BENCH_BODY_BYTES"

// bareServer answers every request with a fixed JSON body of the size of a
// token response: the ceiling for any Go HTTP server on this machine.
func bareServer() int {
	n, _ := strconv.Atoi(os.Getenv(envBody))
	body := []byte(`{"pad":"` + strings.Repeat("x", max(0, n-11)) + `"}` + "\n")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 1
	}
	fmt.Println(ln.Addr().String())
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(body)
	}))
	return 0
}

func buildHost(pkg, out string, tags ...string) error {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	args := []string{"build", "-trimpath", "-ldflags", "-s -w", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// load sends requests GETs from workers and returns requests per second.
func load(url string, workers, requests int, maxDur time.Duration) (float64, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers}
	c := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	var next, failed atomic.Int64
	deadline := time.Now().Add(maxDur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(requests) && time.Now().Before(deadline) {
				resp, err := c.Get(url)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	done := min(next.Load(), int64(requests))
	if failed.Load() > 0 {
		return 0, fmt.Errorf("%d of %d requests failed", failed.Load(), done)
	}
	return float64(done) / el.Seconds(), nil
}

func throughput(r *report) error {
	dir, err := os.MkdirTemp("", "bench-tp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "tokenvendor")
	if err := buildHost("./cmd/tokenvendor", bin); err != nil {
		return err
	}
	port, _ := testenv.FreePort()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	serve := exec.Command(bin, "serve", "--addr", addr, "--log-level", "error")
	serve.Stdout, serve.Stderr = io.Discard, io.Discard
	if err := serve.Start(); err != nil {
		return err
	}
	defer func() { serve.Process.Kill(); serve.Wait() }()
	url := "http://" + addr + "/v1/tokens/demo-k2"
	var body []byte
	for i := 0; i < 100; i++ { // wait for it, and warm the cache
		if resp, err := http.Get(url); err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(body) == 0 {
		return fmt.Errorf("serve did not answer")
	}
	self, _ := os.Executable()
	bare := exec.Command(self)
	bare.Env = append(os.Environ(), envChild+"=bare", envBody+"="+strconv.Itoa(len(body)))
	out, _ := bare.StdoutPipe()
	if err := bare.Start(); err != nil {
		return err
	}
	defer func() { bare.Process.Kill(); bare.Wait() }()
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		return fmt.Errorf("bare server did not start")
	}
	bareURL := "http://" + sc.Text() + "/"
	res := throughputResult{Workers: 16, Requests: 30000, BodyBytes: len(body)}
	rounds := 3
	if r.quick {
		res.Requests, rounds = 5000, 1
	}
	for i := 0; i < rounds; i++ {
		v, err := load(url, res.Workers, res.Requests, 20*time.Second)
		if err != nil {
			return fmt.Errorf("vendor: %w", err)
		}
		b, err := load(bareURL, res.Workers, res.Requests, 20*time.Second)
		if err != nil {
			return fmt.Errorf("bare: %w", err)
		}
		res.VendorRPS, res.BareRPS = append(res.VendorRPS, v), append(res.BareRPS, b)
	}
	r.throughput = res
	return nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
