package integration

import (
	"context"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// BenchmarkL1Hit: target under 1 µs and at most 2 allocations.
func BenchmarkL1Hit(b *testing.B) {
	up := vendtest.NewUpstream(b)
	v := vend.New(vendtest.NewProviders(up.Defs), vendtest.Client(nil), store.NewMemory(nil), vend.Options{})
	ctx := context.Background()
	req := vend.Request{Provider: "demo-dot", Scope: "read write", MinTTL: -1}
	if _, err := v.Token(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.Token(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkL2HitDynamoDBLocal: one GetItem and no write per vend.
func BenchmarkL2HitDynamoDBLocal(b *testing.B) {
	ep := testenv.DynamoDB(b)
	up := vendtest.NewUpstream(b)
	counted := &countingStore{Store: dynamostore.New(testenv.DynamoDBClient(ep), testenv.NewTable(b, ep))}
	v := vend.New(vendtest.NewProviders(up.Defs), vendtest.Client(nil), counted, vend.Options{L1MaxAge: -1})
	ctx := context.Background()
	req := vend.Request{Provider: "demo-dot", Scope: "read write", MinTTL: -1}
	if _, err := v.Token(ctx, req); err != nil {
		b.Fatal(err)
	}
	counted.reset()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.Token(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if counted.gets != b.N || counted.puts != 0 {
		b.Fatalf("%d vends made %d reads and %d writes", b.N, counted.gets, counted.puts)
	}
	b.ReportMetric(float64(counted.gets)/float64(b.N), "GetItem/op")
}
