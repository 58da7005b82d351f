package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// TestDynamoDBStoppedMidRun stops a private DynamoDB Local while callers are
// vending: they keep getting tokens (L1, then the provider directly), the
// provider sees no more than the per-instance rate limit allows, and after
// DynamoDB comes back the shared cache is used again.
func TestDynamoDBStoppedMidRun(t *testing.T) {
	testenv.DynamoDB(t) // the shared instance proves the machine can run it
	dir := os.Getenv(testenv.EnvDDBDir)
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ddb, err := testenv.StartDynamoDBLocalOn(dir, port)
	if err != nil {
		t.Fatal(err)
	}
	defer ddb.Stop()
	table := testenv.NewTable(t, ddb.Endpoint)
	up := vendtest.NewUpstream(t)
	st := dynamostore.New(testenv.DynamoDBClient(ddb.Endpoint), table)
	const burst, perSec = 3, 2.0
	v := vend.New(vendtest.NewProviders(up.Defs), vendtest.Client(nil), st, vend.Options{
		L1MaxAge: 50 * time.Millisecond, FallbackRate: perSec, FallbackBurst: burst, DisableRefreshAhead: true,
		StoreRetryAfter: 200 * time.Millisecond,
	})
	ctx := context.Background()
	scopes := []string{"read", "write", "admin", "read write", "read admin", "write admin"}
	for _, s := range scopes {
		if _, err := v.Token(ctx, vend.Request{Provider: "demo-dot", Scope: s, MinTTL: -1}); err != nil {
			t.Fatal(err)
		}
	}
	before := up.Server.Requests("demo-dot-client")

	ddb.Stop()
	outageStart := time.Now()
	errorsCached, calls := 0, 0
	for time.Since(outageStart) < 2*time.Second {
		for _, s := range scopes { // cached keys: served from L1 whatever its age
			calls++
			if _, err := v.Token(ctx, vend.Request{Provider: "demo-dot", Scope: s, MinTTL: -1}); err != nil {
				errorsCached++
			}
		}
		// A key never cached must come from the provider, rate-limited.
		v.Token(ctx, vend.Request{Provider: "demo-k2", Scope: fmt.Sprint("s", calls), MinTTL: -1})
	}
	outage := time.Since(outageStart)
	if errorsCached != 0 {
		t.Fatalf("%d of %d calls for cached keys failed during the outage", errorsCached, calls)
	}
	if got := up.Server.Requests("demo-dot-client") - before; got != 0 {
		t.Fatalf("cached keys went upstream %d times during the outage", got)
	}
	limit := burst + int(perSec*outage.Seconds()) + 1
	if got := up.Server.Requests("demo-k2-client"); got == 0 || got > limit {
		t.Fatalf("uncached key: %d upstream requests in %v (limit %d)", got, outage, limit)
	}

	// DynamoDB Local comes back (empty: it is in-memory); the table is recreated.
	ddb2, err := testenv.StartDynamoDBLocalOn(dir, port)
	if err != nil {
		t.Fatal(err)
	}
	defer ddb2.Stop()
	if err := dynamostore.CreateTable(ctx, testenv.DynamoDBClient(ddb2.Endpoint), table); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // past StoreRetryAfter: the next call tries the store again
	tok, err := v.Token(ctx, vend.Request{Provider: "demo-mobi", MinTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	it, err := st.Get(ctx, up.Defs["demo-mobi"].KeyFor(nil).PK, true)
	if err != nil || it == nil || it.Token.Plain != tok.AccessToken {
		t.Fatalf("after recovery the token is cached in DynamoDB again: %+v %v", it, err)
	}
}
