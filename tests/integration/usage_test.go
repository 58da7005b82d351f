package integration

import (
	"context"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
)

// TestUsageWrittenBeforeTheHandlerReturns: an instance that serves one
// call and is never used again (Lambda recycles it) still records that the
// key is in use; before, the write waited for a next table read that never
// came, and the key was retired while in use.
func TestUsageWrittenBeforeTheHandlerReturns(t *testing.T) {
	d := newDeployment(t)
	first := d.instance(t)
	if _, err := invoke(t, app.Flushing(first, lambdafn.Invoke(first.Gate, first.Proofs, first.Log, nil)), []byte(`{"provider":"kopokopo"}`)); err != nil {
		t.Fatal(err)
	}
	st := dynamostore.New(d.clients.DynamoDB, d.cfg.Table)
	ctx := context.Background()
	def, err := first.Providers.Get(ctx, "kopokopo")
	if err != nil {
		t.Fatal(err)
	}
	pk := def.KeyFor(def.Scopes).PK
	it, err := st.Get(ctx, pk, true)
	if err != nil || it == nil {
		t.Fatalf("record: %v", err)
	}
	stale := time.Now().Add(-3 * time.Hour).Unix() // older than any usage interval
	next := *it
	next.LastUsedAt, next.Version = stale, it.Version+1
	if err := st.Put(ctx, &next, it.Version); err != nil {
		t.Fatal(err)
	}
	// A new instance serves one call from the table, and is never called again.
	once := d.instance(t)
	if _, err := invoke(t, app.Flushing(once, lambdafn.Invoke(once.Gate, once.Proofs, once.Log, nil)), []byte(`{"provider":"kopokopo"}`)); err != nil {
		t.Fatal(err)
	}
	after, err := st.Get(ctx, pk, true)
	if err != nil || after == nil {
		t.Fatal(err)
	}
	if after.LastUsedAt <= stale {
		t.Fatalf("last_used_at still %d after the handler returned: the usage write was lost", after.LastUsedAt)
	}
}
