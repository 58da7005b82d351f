package integration

import (
	"testing"

	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// TestScenariosOnDynamoDBLocal runs every vending scenario of the unit suite
// with DynamoDB Local as the store: conditional writes, consistent reads and
// lazily-expired records are DynamoDB's own here.
func TestScenariosOnDynamoDBLocal(t *testing.T) {
	ep := testenv.DynamoDB(t)
	client := testenv.DynamoDBClient(ep)
	vendtest.Run(t, func(t *testing.T, _ *vendtest.Clock) vend.Store {
		return dynamostore.New(client, testenv.NewTable(t, ep))
	})
}
