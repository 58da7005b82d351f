package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/tests/fleet"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func TestMain(m *testing.M) {
	fleet.RunIfMember() // fleet members re-execute this binary
	if os.Getenv(envChild) != "" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

// TestQuickRun runs the whole harness at reduced sizes, so `make bench`
// cannot rot between runs, and checks the figures that are contracts.
func TestQuickRun(t *testing.T) {
	testenv.DynamoDB(t)
	r := &report{quick: true}
	for _, step := range []func(*report) error{fleetColdStart, simulatedDay, latency, throughput, coldStart, refreshScale, simulatedWeek, extensionBench, agentBench, signingBench, identityBench, refresherBench, fleetRunBench, fleetDayBench} {
		if err := step(r); err != nil {
			t.Fatal(err)
		}
	}
	for _, row := range r.fleet {
		if row.Upstream["token-vendor"] != 1 || row.Upstream["x/oauth2 per process"] != row.Procs || row.Upstream["naive per request"] != row.Procs*row.Callers {
			t.Fatalf("fleet of %d: %v", row.Procs, row.Upstream)
		}
		for ap, e := range row.Errors {
			if e != 0 {
				t.Fatalf("%s: %d caller errors", ap, e)
			}
		}
	}
	// One caller waits, at the cold start; after that the refresher renews
	// ahead of every expiry.
	if r.day.VendorWaited > 1 || r.day.VendorUpstream >= r.day.BaselineUpstream {
		t.Fatalf("day: %+v", r.day)
	}
	// Identity: every case measured; a cached proof costs no STS call, so it
	// is far cheaper than one STS must verify.
	if len(r.identity) != 5 || r.identity[2].P50*5 > r.identity[3].P50 {
		t.Fatalf("identity rows: %+v", r.identity)
	}
	// The refresher: every key due is renewed once at the provider, and the
	// run returns before its deadline.
	for _, x := range r.refresher {
		if !x.BeforeDline || x.Upstream != x.Renewed || x.Renewed == 0 {
			t.Fatalf("refresher run %+v", x)
		}
	}
	// The bootstrap's scheduled runs: one invocation, and a fan-out with
	// overlapping schedules; every key once, no invocation late.
	if len(r.fleetRuns) != 2 || r.fleetRuns[1].Dispatched != 2*store.Shards {
		t.Fatalf("fleet runs %+v", r.fleetRuns)
	}
	for _, f := range r.fleetRuns {
		if f.Refreshed != f.Keys || f.Upstream != f.Keys || f.Late != 0 {
			t.Fatalf("fleet run %+v", f)
		}
	}
	// The simulated day: with fan-out no caller waits after the warm-up at
	// these sizes; the runs renew every key ahead of its callers.
	for _, d := range r.fleetDay {
		if d.FanOut && d.Waits != 0 || d.Renewals == 0 || d.WarmupWaits != d.Keys {
			t.Fatalf("simulated day %+v", d)
		}
	}
	// The refresh index reads what is due, not the table.
	for _, s := range r.scale {
		if s.IndexItems != s.Due || s.IndexRCU+s.ConfirmRCU > 2*s.DueOwnRCU+store.Shards*0.5 || s.ScanItems < s.Keys {
			t.Fatalf("scale %+v", s)
		}
	}
	if len(r.scale) < 2 || r.scale[1].ScanRCU < 5*r.scale[0].ScanRCU {
		t.Fatalf("two table sizes, the Scan's reads growing with the table: %+v", r.scale)
	}
	// Idle keys stop costing upstream requests; renewed for ever, they did not.
	if wk := r.week; wk.IdleUpstream != 0 || wk.IdleUpstreamForever == 0 || wk.LiveAtEnd > wk.Used || wk.LiveAtEndForever != wk.Keys {
		t.Fatalf("week %+v", wk)
	}
	// A cached read through the extension beats a direct invoke, and costs less.
	if e := r.ext; e.Extension.P50 >= e.DirectInvoke.P50 || e.CostWith >= e.CostWithout {
		t.Fatalf("extension %+v", e)
	}
	// A cached read through the agent does less work than calling the HTTP
	// API each time (allocations: latencies on loopback are too close to
	// compare on a loaded machine; AWS adds the network round trip).
	if a := r.agent; a.Agent.N == 0 || a.DirectHTTP.N == 0 || a.Agent.Allocs >= a.DirectHTTP.Allocs {
		t.Fatalf("agent %+v", a)
	}
	// Four signing keys and the two aws_web_identity rows; a reused JWT
	// costs no STS call, so it is far cheaper than one STS must issue.
	if len(r.signing) != 6 || r.signing[1].P50*10 > r.signing[0].P50 {
		t.Fatalf("signing rows %+v", r.signing)
	}
	for fn, size := range r.cold.Sizes {
		if size > 15<<20 {
			t.Fatalf("%s bootstrap %d bytes", fn, size)
		}
	}
	r.cost()
	dir := t.TempDir()
	if err := r.plot(filepath.Join(dir, "p.png")); err != nil {
		t.Fatal(err)
	}
	if err := r.write(filepath.Join(dir, "B.md"), "p.png"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "B.md"))
	for _, section := range []string{"## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6."} {
		if !strings.Contains(string(b), section) {
			t.Fatalf("report lacks %s", section)
		}
	}
}
