// Command bench measures token-vendor against the alternatives, side by
// side in one run, and writes BENCHMARKS.md and a plot:
//
//	make bench   (= go run ./tests/emulators -- go run ./bench)
//
// The alternatives are what services do without a vendor: x/oauth2's
// clientcredentials with its ReuseTokenSource in every process, and a
// naive fetch per request. Every figure is measured on this machine; the
// upstream is the sandbox authorization server on loopback.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/token-vendor/token-vendor/tests/fleet"
)

func main() {
	fleet.RunIfMember() // fleet members re-execute this binary
	if os.Getenv(envChild) != "" {
		os.Exit(child())
	}
	out := flag.String("out", "BENCHMARKS.md", "report to write")
	plotPath := flag.String("plot", "docs/fleet-upstream.png", "plot of upstream requests vs fleet size")
	quick := flag.Bool("quick", false, "smaller sizes, for a smoke run")
	flag.Parse()
	r := &report{started: time.Now(), goVersion: runtime.Version(), quick: *quick}
	steps := []struct {
		name string
		fn   func(*report) error
	}{
		{"fleet cold start", fleetColdStart},
		{"simulated day", simulatedDay},
		{"latency", latency},
		{"throughput", throughput},
		{"cold start", coldStart},
		{"refresh index vs full scan", refreshScale},
		{"simulated week", simulatedWeek},
		{"extension", extensionBench},
		{"agent", agentBench},
		{"assertion signing", signingBench},
		{"DPoP proofs per resource request", dpopBench},
		{"caller identity", identityBench},
		{"refresher throughput", refresherBench},
		{"refresher bootstrap fleet runs", fleetRunBench},
		{"simulated day at fleet scale", fleetDayBench},
	}
	for _, s := range steps {
		fmt.Fprintf(os.Stderr, "bench: %s…\n", s.name)
		if err := s.fn(r); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s: %v\n", s.name, err)
			os.Exit(1)
		}
	}
	r.cost()
	if err := r.plot(*plotPath); err != nil {
		fmt.Fprintln(os.Stderr, "bench: plot:", err)
		os.Exit(1)
	}
	if err := r.write(*out, *plotPath); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s and %s in %s\n", *out, *plotPath, time.Since(r.started).Round(time.Second))
}
