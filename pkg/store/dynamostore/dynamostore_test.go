package dynamostore_test

import (
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

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
