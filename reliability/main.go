// Command reliability runs the fault suite against the real parts
// (DynamoDB Local, moto, the sandbox, separate processes) and writes
// RELIABILITY.md: every fault tried, how often, and what callers saw.
//
//	make reliability   (= go run ./tests/emulators -- go run ./reliability)
package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/tests/faultproxy"
	"github.com/token-vendor/token-vendor/tests/fleet"
)

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// suite is everything the report holds.
type suite struct {
	started time.Time
	quick   bool
	only    string // run only faults whose name contains this
	faults  []row
	bad     []badRow
	fuzz    []fuzzRow
	attacks []attackRow
}

func (s *suite) run(fuzzTime time.Duration, log io.Writer) error {
	single := []struct {
		name string
		fn   func(bool) (row, error)
	}{
		{"stampede", stampede}, {"sigkill", sigkill}, {"provider down", providerDown}, {"429 storm", retryAfterStorm(429)},
		{"5xx flapping", flapping}, {"DynamoDB outage", ddbOutage}, {"DynamoDB injected faults", ddbInjected},
		{"Secrets Manager down", secretsDown}, {"rotation", rotation}, {"rejected storm", rejectedStorm}, {"clock skew", clockSkew},
		{"wire: lease take", wireWrite("lease take", faultproxy.LeaseTake, nil)},
		{"wire: token write", wireWrite("token write", faultproxy.TokenWrite, nil)},
		{"wire: release", wireWrite("lease release after a refused fetch", faultproxy.Release, &sandbox.Fault{ClientID: "demo-k2-client", Status: 400})},
		{"frozen mid-fetch", frozen(false)}, {"frozen mid-write", frozen(true)}, {"revoke under lease", revokeDuringLease},
		{"503 + Retry-After", retryAfterStorm(503)}, {"hanging provider", hanging}, {"hung and healthy", hungAndHealthy},
		{"deadline mid-renewal", deadlineMidRenewal},
		{"30 s tokens", shortLived(30)}, {"60 s tokens", shortLived(60)}, {"KMS throttled", kmsThrottled},
		{"forced-refresh flood", forcedRefreshFlood}, {"refusal flood", refusalFlood}, {"STS unavailable", stsUnavailable},
	}
	for i, sc := range single {
		if !selected(s.only, sc.name) {
			continue
		}
		fmt.Fprintf(log, "reliability: %s…\n", sc.name)
		r, err := sc.fn(s.quick)
		if err != nil {
			return fmt.Errorf("%s: %w", sc.name, err)
		}
		s.faults = append(s.faults, r)
		if i == 4 && s.only == "" { // keep the report's order: slow provider after flapping
			fmt.Fprintln(log, "reliability: slow provider…")
			rs, err := slow(s.quick)
			if err != nil {
				return fmt.Errorf("slow provider: %w", err)
			}
			s.faults = append(s.faults, rs...)
		}
	}
	if err := s.runAttacks(log); err != nil {
		return err
	}
	fmt.Fprintln(log, "reliability: bad input…")
	bad, err := badInputs()
	if err != nil {
		return err
	}
	s.bad = bad
	if fuzzTime > 0 {
		fmt.Fprintln(log, "reliability: fuzzing…")
		s.fuzz = fuzz(fuzzTime)
	}
	return nil
}

func (s *suite) failures() []string {
	var out []string
	for _, r := range s.faults {
		if !r.Pass {
			out = append(out, "fault: "+r.Fault)
		}
	}
	for _, b := range s.bad {
		if !b.Pass {
			out = append(out, "bad input: "+b.Entry+" "+b.Input+" -> "+b.Got)
		}
	}
	for _, f := range s.fuzz {
		if !f.Pass {
			out = append(out, "fuzz: "+f.Target)
		}
	}
	for _, a := range s.attacks {
		if !a.Pass {
			out = append(out, "attack: "+a.Attack)
		}
	}
	return out
}

func (s *suite) write(path string) error {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# Reliability")
	w("")
	w("Fault suite run on %s by `make reliability` (`go run ./tests/emulators -- go run ./reliability`) against DynamoDB Local, moto, the sandbox authorization server and separate OS processes; %s.", s.started.UTC().Format("2006-01-02 15:04 UTC"), mode(s.quick))
	w("Columns: *calls* — vend calls made; *errors* — calls that failed where the contract allows none; *refused* — calls answered 503 + Retry-After because no token could exist (documented behaviour); *below min_ttl* — tokens handed out with less than min_ttl left (must be 0); *upstream* — token requests the provider saw.")
	w("")
	w("| fault | runs | calls | errors | refused | below min_ttl | upstream | recovery | expected | result |")
	w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |")
	for _, r := range s.faults {
		w("| %s | %d | %d | %d | %d | %d | %d | %s | %s | %s |", r.Fault, r.Runs, r.Calls, r.Errors, r.Refused, r.Below, r.Upstream, r.Recovery, r.Expect, pass(r.Pass))
	}
	w("")
	w("Secret hygiene is checked by `tests/hygiene` (canary secrets and tokens through every entry point, success and failure: never in logs, metrics, error bodies, Lambda errors, listings or panics), part of `make test`.")
	s.writeAttacks(w)
	w("")
	w("## Bad input")
	w("")
	w("| entry point | input | answer | documented | result |")
	w("| --- | --- | --- | --- | --- |")
	for _, r := range s.bad {
		w("| %s | `%s` | %s | %s | %s |", r.Entry, r.Input, r.Got, r.Want, pass(r.Pass))
	}
	if len(s.fuzz) > 0 {
		w("")
		w("## Fuzzing")
		w("")
		w("Each target ran for the time shown; a crasher would be kept by `go test` in the package's `testdata/fuzz` and replayed by every later `go test`.")
		w("")
		w("| target | package | time | result |")
		w("| --- | --- | ---: | --- |")
		for _, f := range s.fuzz {
			w("| %s | %s | %s | %s %s |", f.Target, f.Pkg, f.Time, pass(f.Pass), f.Result)
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// selected reports whether name contains one of the comma-separated parts
// of only ("" selects everything).
func selected(only, name string) bool {
	for _, part := range strings.Split(only, ",") {
		if strings.Contains(name, part) {
			return true
		}
	}
	return false
}

func mode(q bool) string {
	if q {
		return "**quick run (reduced sizes)**"
	}
	return "full sizes"
}

func pass(ok bool) string {
	if ok {
		return "pass"
	}
	return "**FAIL**"
}

func main() {
	fleet.RunIfMember() // fleet members re-execute this binary
	out := flag.String("out", "RELIABILITY.md", "report to write")
	quick := flag.Bool("quick", false, "reduced sizes")
	fuzzTime := flag.Duration("fuzztime", 15*time.Second, "time per fuzz target (0: no fuzzing)")
	only := flag.String("only", "", "run only the faults whose name contains one of these comma-separated parts (for development; the report is partial)")
	flag.Parse()
	s := &suite{started: time.Now(), quick: *quick, only: *only}
	if err := s.run(*fuzzTime, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "reliability:", err)
		os.Exit(1)
	}
	if err := s.write(*out); err != nil {
		fmt.Fprintln(os.Stderr, "reliability:", err)
		os.Exit(1)
	}
	if f := s.failures(); len(f) > 0 {
		fmt.Fprintf(os.Stderr, "reliability: %d failures:\n  %s\n", len(f), strings.Join(f, "\n  "))
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "reliability: all passed; wrote %s in %s\n", *out, time.Since(s.started).Round(time.Second))
}
