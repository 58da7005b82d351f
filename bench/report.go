package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/tests/lambdart"
)

type report struct {
	started    time.Time
	goVersion  string
	quick      bool
	fleet      []fleetRow
	day        dayResult
	latency    []latencyRow
	handler    []latencyRow
	throughput throughputResult
	cold       coldStartResult
	costs      []costRow
	scale      []scaleRow
	week       weekResult
	ext        extensionResult
	agent      agentResult
	signing    []latencyRow
	dpop       []dpopRow
	identity   []latencyRow
	refresher  []refresherRow
	fleetRuns  []lambdart.FleetRun
	fleetDay   []fleetDayRow
	// fleetDayTook is how long the simulated days took to compute.
	fleetDayTook time.Duration
}

// AWS list prices used for the cost estimate (us-east-1).
const (
	lambdaPerGBs        = 0.0000133334 // arm64, per GB-second
	lambdaPerMillionReq = 0.20
	httpAPIPerMillion   = 1.00  // first 300 million a month
	ddbPerMillionRRU    = 0.125 // on-demand read request units
	ddbPerMillionWRU    = 0.625 // on-demand write request units
	smPerSecretMonth    = 0.40  // Secrets Manager, per secret per month
	smPer10kCalls       = 0.05
	memoryGB            = 0.25 // the template's 256 MB
)

type costRow struct {
	Path        string
	P50         time.Duration
	BilledMS    float64
	Invoke, API float64 // USD per million vends
	DynamoDB    float64
}

func (r *report) cost() {
	for _, h := range r.handler {
		billed := math.Ceil(float64(h.P50) / float64(time.Millisecond))
		compute := billed / 1000 * memoryGB * lambdaPerGBs * 1e6
		ddb := 0.0
		if strings.Contains(h.Name, "L2") {
			ddb = 0.5 * ddbPerMillionRRU // one eventually consistent GetItem under 4 KB
		}
		inv := lambdaPerMillionReq + compute + ddb
		r.costs = append(r.costs, costRow{Path: h.Name, P50: h.P50, BilledMS: billed, Invoke: inv, API: inv + httpAPIPerMillion, DynamoDB: ddb})
	}
}

func (r *report) plot(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	p := plot.New()
	p.Title.Text = "Upstream token requests at a cold start (50 callers per process)"
	p.X.Label.Text = "fleet size (processes)"
	p.Y.Label.Text = "requests to the token endpoint"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	var args []any
	for _, ap := range approaches {
		pts := make(plotter.XYs, len(r.fleet))
		for i, row := range r.fleet {
			pts[i].X, pts[i].Y = float64(row.Procs), math.Max(1, float64(row.Upstream[ap]))
		}
		args = append(args, ap, pts)
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return err
	}
	p.Legend.Top = true
	p.Legend.Left = true
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, path)
}

func machine() string {
	model, mem := "unknown CPU", ""
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		if sc.Scan() {
			mem = strings.Join(strings.Fields(sc.Text())[1:], " ")
		}
		f.Close()
	}
	return fmt.Sprintf("%s, %d cores, %s memory, %s/%s", model, runtime.NumCPU(), mem, runtime.GOOS, runtime.GOARCH)
}

func us(d time.Duration) string {
	if d < time.Microsecond {
		return fmt.Sprintf("%d ns", d.Nanoseconds())
	}
	return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond))
}
func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func (r *report) write(path, plotPath string) error {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# Benchmarks")
	w("")
	w("Measured side by side in one run of `make bench` on %s (%s, %s).", r.started.UTC().Format("2006-01-02 15:04 UTC"), machine(), r.goVersion)
	if r.quick {
		w("")
		w("**Quick run (reduced sizes): not the reference figures.**")
	}
	w("Command: `make bench` = `go run ./tests/emulators -- go run ./bench -out BENCHMARKS.md -plot %s` (DynamoDB Local and moto started and stopped by the project). The upstream is the sandbox authorization server on loopback; DynamoDB is Amazon's DynamoDB Local, so its latencies are this machine's, not AWS's.", plotPath)
	w("")
	w("## Headline")
	w("")
	if n := len(r.fleet); n > 0 {
		last := r.fleet[n-1]
		w("- At a cold start of %d processes × %d callers the token endpoint saw **%d** request(s) with token-vendor, %d with x/oauth2 per process (%.0f×) and %d with a fetch per request (%.0f×).",
			last.Procs, last.Callers, last.Upstream[approaches[0]], last.Upstream[approaches[1]], ratio(last.Upstream[approaches[1]], last.Upstream[approaches[0]]), last.Upstream[approaches[2]], ratio(last.Upstream[approaches[2]], last.Upstream[approaches[0]]))
	}
	w("- Over a simulated day, token-vendor made %d upstream requests for %d instances vs %d for per-process caching (%.1f× fewer); callers that waited on the provider: %d vs %d.",
		r.day.VendorUpstream, r.day.Instances, r.day.BaselineUpstream, ratio(r.day.BaselineUpstream, r.day.VendorUpstream), r.day.VendorWaited, r.day.BaselineWaited)
	if len(r.throughput.BareRPS) > 0 {
		w("- `tokenvendor serve` on L1 hits reached **%.2f** of a bare net/http server's throughput (target ≥ 0.70).", median(r.throughput.VendorRPS)/median(r.throughput.BareRPS))
	}
	if len(r.latency) >= 5 {
		w("- An L1 hit takes %s at p50 with %.0f allocations, on par with x/oauth2's in-process cached path (%s) — while one token serves the whole fleet.", us(r.latency[0].P50), r.latency[0].Allocs, us(r.latency[4].P50))
	}
	for _, f := range r.fleetRuns {
		if f.FanOut {
			continue
		}
		w("- One invocation of the real refresher bootstrap renewed **%d keys of %d providers in %s** (%.0f/s, each once at the provider, answering in %s), so one run a minute keeps about %.0f keys with 1-hour tokens fresh; fanned out over the 8 index shards, each with its own invocation in Lambda, about %.0f (projection, §11).",
			f.Refreshed, f.Providers, f.Slowest.Round(100*time.Millisecond), f.RenewalsPerSecond(), f.Latency, f.RenewalsPerSecond()*60*48, store.Shards*f.RenewalsPerSecond()*60*48)
	}
	for _, fan := range []bool{true, false} {
		for _, d := range r.fleetDay {
			switch {
			case d.Keys < 1_000_000 || d.FanOut != fan:
			case fan:
				w("- A simulated day at %d keys in use (fake clock, that rate): **%d** callers waited on a provider after the warm-up with fan-out.", d.Keys, d.Waits)
			default:
				w("- Without fan-out, at %d keys: %d of %d caller requests waited (%.1f %%).", d.Keys, d.Waits, d.Uses, 100*float64(d.Waits)/float64(max(d.Uses, 1)))
			}
		}
	}
	w("")
	w("![upstream requests vs fleet size](%s)", plotPath)
	w("")
	w("## 1. Upstream token requests at a cold start")
	w("")
	w("Separate OS processes, %d callers each, all asking at once for one Kopo Kopo-style token on a cold cache. Target for token-vendor: exactly 1 at every size.", 50)
	w("")
	w("| processes | token-vendor | x/oauth2 ReuseTokenSource per process | naive fetch per request | caller errors |")
	w("| ---: | ---: | ---: | ---: | ---: |")
	for _, row := range r.fleet {
		errs := 0
		for _, e := range row.Errors {
			errs += e
		}
		w("| %d | %d | %d | %d | %d |", row.Procs, row.Upstream[approaches[0]], row.Upstream[approaches[1]], row.Upstream[approaches[2]], errs)
	}
	w("")
	w("## 2. A simulated day")
	w("")
	w("Fake clock, %d h, %d instances each vending every %d s (%d vends), 3600 s tokens. token-vendor: shared DynamoDB Local table, refresher every minute (%d runs), background refresh off so only the refresher renews. Baseline: per-process cache with x/oauth2's rule (reuse until 10 s before expiry), re-implemented on the fake clock because x/oauth2 reads the wall clock; its fetches are real requests to the sandbox.", r.day.Hours, r.day.Instances, r.day.Period, r.day.Vends, r.day.RefresherRuns)
	w("")
	w("| | upstream requests | caller requests that waited on the provider |")
	w("| --- | ---: | ---: |")
	w("| token-vendor | %d | %d |", r.day.VendorUpstream, r.day.VendorWaited)
	w("| per-process baseline | %d | %d |", r.day.BaselineUpstream, r.day.BaselineWaited)
	w("")
	w("Target: no caller waits after the first request. The first vend of the day is the cold start.")
	w("")
	w("## 3. Latency per vend")
	w("")
	w("| path | samples | p50 | p99 | max | allocs/op |")
	w("| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, l := range r.latency {
		w("| %s | %d | %s | %s | %s | %.0f |", l.Name, l.N, us(l.P50), us(l.P99), us(l.Max), l.Allocs)
	}
	w("")
	w("`go test -bench` figures for the same paths: `go run ./tests/emulators -- go test -run '^$' -bench . -benchmem ./tests/integration/` (targets: L1 hit under 1 µs with at most 2 allocations; an L2 hit is one GetItem and no write, asserted by the benchmark).")
	w("")
	w("## 4. Throughput of `tokenvendor serve` (L1 hits)")
	w("")
	tp := r.throughput
	w("Both servers are separate processes on loopback, loaded by the same Go client (%d workers, %d requests or 20 s per round, rounds interleaved). The bare server returns a %d-byte JSON body, the size of the token response.", tp.Workers, tp.Requests, tp.BodyBytes)
	w("")
	w("| round | tokenvendor serve (req/s) | bare net/http (req/s) | ratio |")
	w("| ---: | ---: | ---: | ---: |")
	for i := range tp.VendorRPS {
		w("| %d | %.0f | %.0f | %.2f |", i+1, tp.VendorRPS[i], tp.BareRPS[i], tp.VendorRPS[i]/tp.BareRPS[i])
	}
	w("")
	w("## 5. Cold-start proxies")
	w("")
	w("| function | linux/arm64 bootstrap (MB, target ≤ 15) |")
	w("| --- | ---: |")
	for _, fn := range []string{"api", "vend", "refresher"} {
		w("| %s | %.2f |", fn, float64(r.cold.Sizes[fn])/1e6)
	}
	w("")
	if n := len(r.cold.Ready); n > 0 {
		w("Process start to the runtime loop's first `GET /runtime/invocation/next` (vend function built for this machine, fake Runtime API, AWS config loaded and parts wired, no network at init), %d runs: median **%s**, min %s, max %s (target < 30 ms).", n, ms(r.cold.Ready[n/2]), ms(r.cold.Ready[0]), ms(r.cold.Ready[n-1]))
	}
	w("")
	w("## 6. Cost per million vends")
	w("")
	w("AWS list prices (us-east-1): Lambda arm64 $%.10f per GB-s and $%.2f per million requests; HTTP API $%.2f per million requests; DynamoDB on-demand $%.3f per million read request units. 256 MB functions; billed duration = the measured handler p50 rounded up to the next millisecond.", lambdaPerGBs, lambdaPerMillionReq, httpAPIPerMillion, ddbPerMillionRRU)
	w("")
	w("cost per million = $0.20 (requests) + ceil(p50 ms)/1000 × 0.25 GB × $0.0000133334 × 10⁶ + DynamoDB reads (0.5 RRU per L2 hit) [+ $1.00 for the HTTP API]")
	w("")
	w("| path | handler p50 | billed | direct invoke ($/M) | via HTTP API ($/M) |")
	w("| --- | ---: | ---: | ---: | ---: |")
	for _, c := range r.costs {
		w("| %s | %s | %.0f ms | %.3f | %.3f |", c.Path, us(c.P50), c.BilledMS, c.Invoke, c.API)
	}
	w("")
	w("A real DynamoDB GetItem from Lambda takes a few milliseconds rather than DynamoDB Local's, so an L2 hit bills a few more ms (about $0.004 per extra ms per million). Upstream fetches are rare (section 2) and not included.")
	r.writeScale(w)
	r.writeExtension(w)
	r.writeAgent(w)
	r.writeSigning(w)
	r.writeIdentity(w)
	r.writeRefresher(w)
	r.writeDPoP(w)
	r.writeFleet(w)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return nil
}

func ratio(a, b int) float64 {
	if b == 0 {
		return math.Inf(1)
	}
	return float64(a) / float64(b)
}
