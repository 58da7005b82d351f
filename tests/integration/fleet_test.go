package integration

import (
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/fleet"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func startFleet(t *testing.T, n int, up *vendtest.Upstream, lease time.Duration) *fleet.Fleet {
	t.Helper()
	ep := testenv.DynamoDB(t)
	defs, err := fleet.WriteDefs(t.TempDir(), up.Defs)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.Start(n, fleet.Options{Table: testenv.NewTable(t, ep), DefsFile: defs, Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// TestFleetStampedeOneUpstreamRequest: 8 OS processes × 50 goroutines on a
// cold cache ask at once; the provider sees one request and everyone gets
// the same token. 20 rounds, each after the previous round's token expired.
func TestFleetStampedeOneUpstreamRequest(t *testing.T) {
	up := vendtest.NewUpstream(t)
	const procs, callers, rounds = 8, 50, 20
	f := startFleet(t, procs, up, 10*time.Second)
	for round := 1; round <= rounds; round++ {
		before := up.Server.Requests("demo-k2-client")
		rep, err := f.Round(fleet.Command{Provider: "demo-k2", Callers: callers, MinTTL: 60, OffsetS: int64(round) * 7200})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Errors) > 0 || rep.BelowMinTTL > 0 {
			t.Fatalf("round %d: %d caller errors (%v), %d below min_ttl", round, len(rep.Errors), rep.Errors, rep.BelowMinTTL)
		}
		got := up.Server.Requests("demo-k2-client") - before
		if got != 1 || len(rep.Tokens) != 1 {
			t.Fatalf("round %d: %d upstream requests, %d distinct tokens across the fleet", round, got, len(rep.Tokens))
		}
		for _, n := range rep.Tokens {
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
	up := vendtest.NewUpstream(t)
	const lease = 2 * time.Second
	f := startFleet(t, 3, up, lease)
	up.Server.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Delay: time.Minute, Times: 1})
	holder := f.Members[0]
	if err := holder.Send(fleet.Command{Provider: "demo-k2", Callers: 5, StartUnixMS: time.Now().UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for up.Server.Requests("demo-k2-client") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("holder never called the provider")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := holder.Kill(); err != nil {
		t.Fatal(err)
	}
	rep, err := f.Round(fleet.Command{Provider: "demo-k2", Callers: 20, MinTTL: 60, StartUnixMS: time.Now().UnixMilli()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Errors) > 0 {
		t.Fatalf("caller errors after the holder died: %v", rep.Errors[0])
	}
	if rep.MaxWaitMS > (lease + time.Second).Milliseconds() {
		t.Fatalf("a caller waited %d ms, more than lease + 1 s", rep.MaxWaitMS)
	}
	if n := up.Server.Requests("demo-k2-client"); n != 2 || len(rep.Tokens) != 1 {
		t.Fatalf("upstream requests %d (want 2: the dead holder's and one take-over), distinct tokens %d", n, len(rep.Tokens))
	}
}
