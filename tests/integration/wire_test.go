package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/faultproxy"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// TestWireFaultsOnWrites puts the fault proxy between the SDK and DynamoDB
// Local and makes each of the three writes of a fetch land and then fail on
// the wire: answered 500 (the SDK retries, and the retry fails its
// condition against the write that landed), or the connection dropped with
// no answer. In every case the caller is answered at once (not after its
// own 10 s lease), the provider is asked once, and the record is left with
// no lease held; a write that landed is not reported lost.
func TestWireFaultsOnWrites(t *testing.T) {
	ep := testenv.DynamoDB(t)
	points := []struct {
		name     string
		match    func(faultproxy.Request) bool
		fault    *sandbox.Fault // upstream answer that leads to this write
		want     func(error) bool
		deadline time.Duration // the caller's
	}{
		{"lease take", faultproxy.LeaseTake, nil, succeeded, 30 * time.Second},
		{"token write", faultproxy.TokenWrite, nil, succeeded, 30 * time.Second},
		{"release after a refused fetch", faultproxy.Release, &sandbox.Fault{ClientID: "demo-k2-client", Status: 400}, permanent, 30 * time.Second},
		// The provider outlasts the caller's deadline: the failure record
		// must still be written (with a context that outlives the caller's),
		// or the lease stays held for all of LEASE_DURATION.
		{"release after the caller's deadline", faultproxy.Release, &sandbox.Fault{ClientID: "demo-k2-client", Delay: time.Minute}, unavailable, 5 * time.Second},
	}
	for _, p := range points {
		for _, a := range []faultproxy.Action{faultproxy.ApplyThen500, faultproxy.DropAfterApply} {
			t.Run(fmt.Sprintf("%s/%s", p.name, a), func(t *testing.T) {
				px, err := faultproxy.Start(ep)
				if err != nil {
					t.Fatal(err)
				}
				defer px.Close()
				table := testenv.NewTable(t, ep)
				up := vendtest.NewUpstream(t)
				direct := dynamostore.New(testenv.DynamoDBClient(ep), table)
				proxied := dynamostore.New(testenv.DynamoDBClient(px.URL), table)
				ev := vendtest.NewEvents()
				o := vend.Options{LeaseDuration: 10 * time.Second, L1MaxAge: -1, DisableRefreshAhead: true, Observer: ev}
				client := &upstream.Client{AttemptTimeout: time.Minute, MaxAttempts: 1, MaxRetryAfter: -1}
				v := vend.New(vendtest.NewProviders(up.Defs), client, proxied, o)
				rule := px.Add(&faultproxy.Rule{Operation: "PutItem", Match: p.match, Action: a, Times: 1})
				if p.fault != nil {
					up.Server.SetFault(*p.fault)
				}
				ctx, cancel := context.WithTimeout(context.Background(), p.deadline)
				defer cancel()
				r := vend.Request{Provider: "demo-k2", MinTTL: -1}
				start := time.Now()
				tok, err := v.Token(ctx, r)
				took := time.Since(start)
				if px.Hits(rule) != 1 {
					t.Fatalf("the fault was not injected (%d hits)", px.Hits(rule))
				}
				if !p.want(err) {
					t.Fatalf("caller got %v", err)
				}
				if took > p.deadline/2+3*time.Second {
					t.Fatalf("caller answered after %v: it waited on its own lease", took)
				}
				if n := up.Server.Requests("demo-k2-client"); n != 1 {
					t.Fatalf("provider asked %d times, want 1", n)
				}
				ctx = context.Background()
				it, err := direct.Get(ctx, up.Defs["demo-k2"].KeyFor(nil).PK, true)
				if err != nil || it == nil {
					t.Fatalf("record: %v %v", it, err)
				}
				if it.LeaseOwner != "" {
					t.Fatalf("lease left held by %s until %v", it.LeaseOwner, it.LeaseUntil())
				}
				if p.fault == nil && it.Token.Plain != tok.AccessToken {
					t.Fatal("stored token is not the one the caller got")
				}
				if n := ev.Count("store_write_lost"); n != 0 {
					t.Fatalf("a write that landed was counted as lost %d times (a false alarm)", n)
				}
				if p.fault != nil && it.LastError == "" {
					t.Fatal("failure not recorded")
				}
				// Another instance, straight to DynamoDB: the token from the
				// table, or the recorded refusal, with no upstream request.
				other, err := vend.New(vendtest.NewProviders(up.Defs), client, direct, o).Token(ctx, r)
				if p.fault == nil && (err != nil || other.Source != vend.FromL2 || other.AccessToken != tok.AccessToken) {
					t.Fatalf("second instance: source %s, err %v", other.Source, err)
				}
				if p.fault != nil && !p.want(err) {
					t.Fatalf("second instance: want the recorded refusal or cooldown, got %v", err)
				}
				if n := up.Server.Requests("demo-k2-client"); n != 1 {
					t.Fatalf("provider asked %d times after the second instance, want 1", n)
				}
			})
		}
	}
}

func succeeded(err error) bool { return err == nil }

func unavailable(err error) bool { _, ok := vend.IsUnavailable(err); return ok }

func permanent(err error) bool {
	re, ok := upstream.AsRetrieveError(err)
	return ok && re.Kind == upstream.Permanent
}
