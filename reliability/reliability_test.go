package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/token-vendor/token-vendor/tests/fleet"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func TestMain(m *testing.M) {
	fleet.RunIfMember() // fleet members re-execute this binary
	os.Exit(m.Run())
}

// TestQuickSuite is `make reliability` at bounded sizes, without fuzzing
// (the fuzz targets' seed corpora run as ordinary tests): every fault and
// every bad input must meet its contract.
func TestQuickSuite(t *testing.T) {
	testenv.DynamoDB(t)
	testenv.Moto(t)
	s := &suite{quick: true}
	if err := s.run(0, testWriter{t}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "RELIABILITY.md")
	if err := s.write(out); err != nil {
		t.Fatal(err)
	}
	if f := s.failures(); len(f) > 0 {
		b, _ := os.ReadFile(out)
		t.Fatalf("%d failures:\n%s\n\n%s", len(f), strings.Join(f, "\n"), b)
	}
	if len(s.faults) < 28 || len(s.bad) < 40 {
		t.Fatalf("suite incomplete: %d faults, %d bad inputs", len(s.faults), len(s.bad))
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
