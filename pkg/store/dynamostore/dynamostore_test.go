package dynamostore_test

import (
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/store/storetest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func TestDynamoDBLocalContract(t *testing.T) {
	ep := testenv.DynamoDB(t)
	client := testenv.DynamoDBClient(ep)
	storetest.Run(t, func(t *testing.T) storetest.Store {
		return dynamostore.New(client, testenv.NewTable(t, ep))
	})
}

func TestCreateTableSchema(t *testing.T) {
	ep := testenv.DynamoDB(t)
	client := testenv.DynamoDBClient(ep)
	table := testenv.NewTable(t, ep)
	// Creating it again is not an error: local mode calls it on every start.
	if err := dynamostore.CreateTable(context.Background(), client, table); err != nil {
		t.Fatal(err)
	}
	ttl, err := client.DescribeTimeToLive(context.Background(), &dynamodb.DescribeTimeToLiveInput{TableName: aws.String(table)})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(ttl.TimeToLiveDescription.AttributeName) != "expires_at" {
		t.Fatalf("TTL attribute %v", ttl.TimeToLiveDescription)
	}
	desc, err := client.DescribeTable(context.Background(), &dynamodb.DescribeTableInput{TableName: aws.String(table)})
	if err != nil {
		t.Fatal(err)
	}
	if ks := desc.Table.KeySchema; len(ks) != 1 || aws.ToString(ks[0].AttributeName) != "pk" {
		t.Fatalf("key schema %+v", ks)
	}
}

// One undecodable record in the refresh index is skipped and reported;
// the rest of the due set is returned.
func TestDueSkipsUndecodableRecords(t *testing.T) {
	ep := testenv.DynamoDB(t)
	client := testenv.DynamoDBClient(ep)
	table := testenv.NewTable(t, ep)
	st := dynamostore.New(client, table)
	var skipped []string
	st.OnUndecodable = func(_ context.Context, pk string, err error) { skipped = append(skipped, pk) }
	ctx := context.Background()
	now := time.Now()
	good := &store.Item{PK: "token#p#fp#read", Provider: "p", Scope: "read", Token: store.Secret{Plain: "t"},
		IssuedAt: now.Unix(), ExpiresAt: now.Add(time.Hour).Unix(), RefreshAt: now.Add(-time.Minute).Unix(), Version: 1}
	if err := st.Put(ctx, good, 0); err != nil {
		t.Fatal(err)
	}
	av, err := dynamostore.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	av["pk"] = &types.AttributeValueMemberS{Value: "token#p#fp#bad"}
	av["issued_at"] = &types.AttributeValueMemberS{Value: "not a number"}
	if _, err := client.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(table), Item: av}); err != nil {
		t.Fatal(err)
	}
	due, err := st.Due(ctx, now, nil)
	if err != nil {
		t.Fatalf("one bad record failed the query: %v", err)
	}
	if len(due) != 1 || due[0].PK != good.PK || len(skipped) != 1 || skipped[0] != "token#p#fp#bad" {
		t.Fatalf("due %d, skipped %v", len(due), skipped)
	}
}
