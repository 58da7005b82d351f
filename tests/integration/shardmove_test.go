package integration

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// oldShard is where the version before providers had shards indexed a key:
// FNV-1a of its pk, modulo 8.
func oldShard(pk string) int {
	h := uint32(2166136261)
	for i := 0; i < len(pk); i++ {
		h = (h ^ uint32(pk[i])) * 16777619
	}
	return int(h % store.Shards)
}

// An upgrade leaves records indexed under the old key-hash shards, spread
// over every shard, while the provider's own shard holds the rest. Eight
// shard runs at once, twice (two overlapping schedules), each round, on
// DynamoDB Local: a run renews only the providers its shard owns and moves
// a misplaced record to its provider's shard, so the provider (with
// max_concurrent_fetches 1) never sees two requests at once, every key is
// renewed exactly once over two rounds, and no record is left in a shard
// that is not its provider's.
func TestUpgradedIndexNeverRenewsOneProviderTwiceAtOnce(t *testing.T) {
	ep := testenv.DynamoDB(t)
	client := testenv.DynamoDBClient(ep)
	table := testenv.NewTable(t, ep)
	st := dynamostore.New(client, table)
	ctx := context.Background()
	clock := vendtest.NewClock()
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	defs := sandbox.DemoProviders(sb, srv.URL)
	capped := *defs["demo-k2"]
	capped.MaxConcurrentFetches = 1
	if err := capped.Validate(); err != nil {
		t.Fatal(err)
	}
	defs["demo-k2"] = &capped
	v := vend.New(registry.NewStatic(defs), &upstream.Client{AttemptTimeout: 5 * time.Second, MaxAttempts: 1, Now: clock.Now}, st,
		vend.Options{Now: clock.Now, DisableRefreshAhead: true, L1MaxAge: -1})
	const keys = 24
	own := store.ShardOf("demo-k2")
	misplaced := 0
	for i := range keys {
		if _, err := v.Token(ctx, vend.Request{Provider: "demo-k2", Scope: fmt.Sprint("s", i), MinTTL: -1}); err != nil {
			t.Fatal(err)
		}
		pk := capped.KeyFor([]string{fmt.Sprint("s", i)}).PK
		old := oldShard(pk)
		if old == own {
			continue
		}
		// As the previous version wrote it: the same record under its
		// key's shard.
		it, err := st.Get(ctx, pk, true)
		if err != nil || it == nil {
			t.Fatalf("%s: %v", pk, err)
		}
		av, err := dynamostore.Marshal(it)
		if err != nil {
			t.Fatal(err)
		}
		av["due_shard"] = &ddbtypes.AttributeValueMemberS{Value: strconv.Itoa(old)}
		if _, err := client.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(table), Item: av}); err != nil {
			t.Fatal(err)
		}
		misplaced++
	}
	if misplaced < keys/2 {
		t.Fatalf("only %d of %d keys would have been in another shard", misplaced, keys)
	}
	sb.ResetStats()
	sb.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Delay: 50 * time.Millisecond})
	clock.Advance(58 * time.Minute) // every key due within the next minute
	renewed, moved := 0, 0
	for range 2 {
		var (
			wg sync.WaitGroup
			mu sync.Mutex
		)
		for range 2 {
			for sh := range store.Shards {
				wg.Go(func() {
					rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
					defer cancel()
					res, err := v.RefreshDue(rctx, vend.RefreshOptions{Horizon: time.Minute, Shards: []int{sh}, Exclusive: true})
					if err != nil {
						t.Error(err)
					}
					mu.Lock()
					renewed += res.Refreshed
					moved += res.Moved
					mu.Unlock()
				})
			}
		}
		wg.Wait()
	}
	if p := sb.PeakInFlight("demo-k2-client"); p > 1 {
		t.Errorf("the provider answered %d token requests at once; max_concurrent_fetches is 1", p)
	}
	if n := sb.Requests("demo-k2-client"); n != keys || renewed != keys {
		t.Errorf("%d token requests and %d renewals for %d keys over two rounds; want each key exactly once", n, renewed, keys)
	}
	if moved != misplaced {
		t.Errorf("moved %d records to their provider's shard; %d were misplaced", moved, misplaced)
	}
	for sh := range store.Shards {
		if sh == own {
			continue
		}
		if left, err := st.Due(ctx, clock.Now().Add(24*time.Hour), []int{sh}); err != nil || len(left) != 0 {
			t.Errorf("shard %d still holds %d of demo-k2's records (%v)", sh, len(left), err)
		}
	}
}
