package main

import (
	"strings"
	"testing"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

// TestDPoPBenchQuick runs the DPoP step of make bench at quick size (it
// is not in TestQuickRun's list, so it runs once) and checks its
// contracts: every path answers with a proof; unpooled paths call the
// vendor once per proof, the extension's pool once per 8.
func TestDPoPBenchQuick(t *testing.T) {
	testenv.Moto(t)
	r := &report{quick: true}
	if err := dpopBench(r); err != nil {
		t.Fatal(err)
	}
	if len(r.dpop) != 8 {
		t.Fatalf("%d rows, want 4 paths × 2 keys", len(r.dpop))
	}
	for _, d := range r.dpop {
		per := float64(d.VendCalls) / float64(d.Requests)
		pooled := strings.HasPrefix(d.Name, "extension, pooled")
		t.Logf("%s: p50 %v p99 %v, %.2f vend calls per request", d.Name, d.P50, d.P99, per)
		if (pooled && per > 0.2) || (!pooled && per != 1) {
			t.Errorf("%s: %.2f vend calls per request", d.Name, per)
		}
	}
	var b strings.Builder
	r.writeDPoP(func(f string, a ...any) { b.WriteString(f + "\n") })
	if !strings.Contains(b.String(), "## 12.") {
		t.Fatal("no DPoP section in the report")
	}
}
