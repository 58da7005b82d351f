package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// TestKeyCountRecordStaysSmall: 420 distinct scope sets of about 1 KB each
// (on main before the fix, DynamoDB Local refused the key-count record at
// 389 with "Item size has exceeded the maximum allowed size", and the
// instance then vended every provider around the store). Every key is
// admitted, the record stays far below 400 KB, and another provider on the
// same instance keeps using the table.
func TestKeyCountRecordStaysSmall(t *testing.T) {
	ep := testenv.DynamoDB(t)
	client := testenv.DynamoDBClient(ep)
	table := testenv.NewTable(t, ep)
	up := vendtest.NewUpstream(t)
	def := *up.Defs["demo-k2"]
	def.MaxKeys = 1000
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	up.Defs["demo-k2"] = &def
	v := vend.New(registry.NewStatic(up.Defs), vendtest.Client(nil), dynamostore.New(client, table), vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	ctx := context.Background()
	n := 420
	for i := range n {
		scope := fmt.Sprintf("s%03d-%s", i, strings.Repeat("x", 1000))
		if _, err := v.Token(ctx, vend.Request{Provider: "demo-k2", Scope: scope, MinTTL: -1}); err != nil {
			t.Fatalf("scope set %d: %v", i, err)
		}
	}
	out, err := client.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(table), ConsistentRead: aws.Bool(true),
		Key: map[string]ddbtypes.AttributeValue{"pk": &ddbtypes.AttributeValueMemberS{Value: "keys#demo-k2"}}})
	if err != nil || out.Item == nil {
		t.Fatalf("key-count record: %v", err)
	}
	members := out.Item["members"].(*ddbtypes.AttributeValueMemberM).Value
	size := 0
	for k := range members {
		size += len(k) + 8
	}
	if len(members) != n || size > 150<<10 {
		t.Fatalf("%d members taking about %d bytes", len(members), size)
	}
	start := time.Now()
	if _, err := v.Token(ctx, vend.Request{Provider: "demo-mobi", MinTTL: -1}); err != nil {
		t.Fatal(err)
	}
	if it, err := dynamostore.New(client, table).Get(ctx, up.Defs["demo-mobi"].KeyFor(nil).PK, true); err != nil || it == nil {
		t.Fatalf("the healthy provider's token is not in the table (vended around it?): %v", err)
	}
	t.Logf("%d keys admitted; record about %d KB; healthy provider in %v", n, size>>10, time.Since(start))
}
