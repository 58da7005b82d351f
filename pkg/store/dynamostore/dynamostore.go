// Package dynamostore keeps token cache records in a DynamoDB table
// (docs/design.md §4): string partition key pk, TTL on expires_at.
package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"

	"github.com/token-vendor/token-vendor/pkg/store"
)

// API is the part of the DynamoDB client the store uses.
type API interface {
	GetItem(ctx context.Context, in *dynamodb.GetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error)
	PutItem(ctx context.Context, in *dynamodb.PutItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error)
	Scan(ctx context.Context, in *dynamodb.ScanInput, optFns ...func(*dynamodb.Options)) (*dynamodb.ScanOutput, error)
	Query(ctx context.Context, in *dynamodb.QueryInput, optFns ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error)
}

// The refresh index (docs/design.md §4): a sparse global secondary index
// keyed by a shard of pk and sorted by refresh_at, written only on records
// that hold a token and are not retired, so a refresher run reads what is
// due and nothing else. Shards spread the index's writes over partitions.
const (
	IndexName = "due"
	shardAttr = "due_shard"
)

// Shard is the index partition of a record, as the index attribute holds
// it: its provider's shard (store.ShardOf).
func Shard(it *store.Item) string { return strconv.Itoa(store.ShardOf(it.Provider)) }

// Store is a DynamoDB-backed token cache.
type Store struct {
	api   API
	table string
	// OnUndecodable hears of a record in the refresh index that cannot be
	// decoded (written by hand, or by another version): Due skips it.
	OnUndecodable func(ctx context.Context, pk string, err error)
}

// New returns a store over an existing table.
func New(api API, table string) *Store { return &Store{api: api, table: table} }

// Get reads one record; consistent asks for a strongly consistent read,
// which waiters and CAS retries need to see the winner's write.
func (s *Store) Get(ctx context.Context, pk string, consistent bool) (*store.Item, error) {
	out, err := s.api.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:      aws.String(s.table),
		Key:            map[string]ddbtypes.AttributeValue{"pk": &ddbtypes.AttributeValueMemberS{Value: pk}},
		ConsistentRead: aws.Bool(consistent),
	})
	if err != nil {
		return nil, fmt.Errorf("dynamodb get: %w", classify(err))
	}
	if out.Item == nil {
		return nil, nil
	}
	var it store.Item
	if err := attributevalue.UnmarshalMap(out.Item, &it); err != nil {
		return nil, fmt.Errorf("dynamodb get: decode record: %w", err)
	}
	return &it, nil
}

// Marshal is a record as the table holds it: its attributes, and the
// refresh index's key when it belongs in the index.
func Marshal(it *store.Item) (map[string]ddbtypes.AttributeValue, error) {
	av, err := attributevalue.MarshalMap(it)
	if err != nil {
		return nil, fmt.Errorf("encode record: %w", err)
	}
	if it.InRefreshIndex() {
		av[shardAttr] = &ddbtypes.AttributeValueMemberS{Value: Shard(it)}
	}
	return av, nil
}

// Put writes the whole record if its stored version is expect (0: absent).
func (s *Store) Put(ctx context.Context, it *store.Item, expect int64) error {
	av, err := Marshal(it)
	if err != nil {
		return fmt.Errorf("dynamodb put: %w", err)
	}
	var cond expression.ConditionBuilder
	if expect == 0 {
		cond = expression.AttributeNotExists(expression.Name("pk"))
	} else {
		cond = expression.Name("version").Equal(expression.Value(expect))
	}
	ex, err := expression.NewBuilder().WithCondition(cond).Build()
	if err != nil {
		return fmt.Errorf("dynamodb put: %w", err)
	}
	_, err = s.api.PutItem(ctx, &dynamodb.PutItemInput{
		TableName:                 aws.String(s.table),
		Item:                      av,
		ConditionExpression:       ex.Condition(),
		ExpressionAttributeNames:  ex.Names(),
		ExpressionAttributeValues: ex.Values(),
		// The record that failed the condition comes back with the error: a
		// retried write that had landed is recognised by its write_id.
		ReturnValuesOnConditionCheckFailure: ddbtypes.ReturnValuesOnConditionCheckFailureAllOld,
	})
	var ccf *ddbtypes.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		ce := &store.ConflictError{}
		if len(ccf.Item) > 0 {
			var cur store.Item
			if attributevalue.UnmarshalMap(ccf.Item, &cur) == nil {
				ce.Current = &cur
			}
		}
		return ce
	}
	if err != nil {
		return fmt.Errorf("dynamodb put: %w", classify(err))
	}
	return nil
}

// classify marks DynamoDB's refusals of one request (validation, item too
// large) as store.ErrRejected: they say nothing about DynamoDB being down.
func classify(err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "ValidationException", "ItemCollectionSizeLimitExceededException":
			return fmt.Errorf("%w: %w", store.ErrRejected, err)
		}
	}
	return err
}

// ScanPage is one bounded page of a filtered Scan (the provider listing):
// DynamoDB evaluates up to limit records after the key after and returns
// the matching ones, and the key to continue after ("" at the end). The
// refresher reads the refresh index instead (Due).
func (s *Store) ScanPage(ctx context.Context, f store.Filter, after string, limit int) ([]*store.Item, string, error) {
	in := &dynamodb.ScanInput{TableName: aws.String(s.table), Limit: aws.Int32(int32(limit))}
	if after != "" {
		in.ExclusiveStartKey = map[string]ddbtypes.AttributeValue{"pk": &ddbtypes.AttributeValueMemberS{Value: after}}
	}
	if cond, ok := filterExpr(f); ok {
		ex, err := expression.NewBuilder().WithFilter(cond).Build()
		if err != nil {
			return nil, "", fmt.Errorf("dynamodb scan: %w", err)
		}
		in.FilterExpression, in.ExpressionAttributeNames, in.ExpressionAttributeValues = ex.Filter(), ex.Names(), ex.Values()
	}
	page, err := s.api.Scan(ctx, in)
	if err != nil {
		return nil, "", fmt.Errorf("dynamodb scan: %w", err)
	}
	var out []*store.Item
	for _, av := range page.Items {
		var it store.Item
		if err := attributevalue.UnmarshalMap(av, &it); err != nil {
			return nil, "", fmt.Errorf("dynamodb scan: decode record: %w", err)
		}
		out = append(out, &it)
	}
	next := ""
	if pk, ok := page.LastEvaluatedKey["pk"].(*ddbtypes.AttributeValueMemberS); ok {
		next = pk.Value
	}
	return out, next, nil
}

// Due queries the given shards of the refresh index (nil: all), one Query
// each, in parallel, for records whose refresh_at is before before. The
// index is eventually consistent: callers confirm each record with a
// consistent read (the lease protocol does).
func (s *Store) Due(ctx context.Context, before time.Time, shards []int) ([]*store.Item, error) {
	if shards == nil {
		shards = store.AllShards()
	}
	for _, sh := range shards {
		if sh < 0 || sh >= store.Shards {
			return nil, fmt.Errorf("refresh index shard %d: want 0 to %d", sh, store.Shards-1)
		}
	}
	var (
		mu   sync.Mutex
		out  []*store.Item
		errs = make([]error, len(shards))
		wg   sync.WaitGroup
	)
	for i, sh := range shards {
		wg.Go(func() {
			key := expression.Key(shardAttr).Equal(expression.Value(strconv.Itoa(sh))).
				And(expression.Key("refresh_at").LessThan(expression.Value(before.Unix())))
			ex, err := expression.NewBuilder().WithKeyCondition(key).Build()
			if err != nil {
				errs[i] = err
				return
			}
			p := dynamodb.NewQueryPaginator(s.api, &dynamodb.QueryInput{
				TableName: aws.String(s.table), IndexName: aws.String(IndexName),
				KeyConditionExpression: ex.KeyCondition(), ExpressionAttributeNames: ex.Names(), ExpressionAttributeValues: ex.Values(),
			})
			for p.HasMorePages() {
				page, err := p.NextPage(ctx)
				if err != nil {
					errs[i] = err
					return
				}
				for _, av := range page.Items {
					var it store.Item
					if err := attributevalue.UnmarshalMap(av, &it); err != nil {
						// One bad record must not fail every run: skip it.
						if s.OnUndecodable != nil {
							var pk string
							_ = attributevalue.Unmarshal(av["pk"], &pk)
							s.OnUndecodable(ctx, pk, err)
						}
						continue
					}
					it.FoundInShard = sh
					mu.Lock()
					out = append(out, &it)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("dynamodb query %s index: %w", IndexName, err)
	}
	store.SortByExpiry(out)
	return out, nil
}

func filterExpr(f store.Filter) (expression.ConditionBuilder, bool) {
	var conds []expression.ConditionBuilder
	if f.Prefix != "" {
		conds = append(conds, expression.Name("pk").BeginsWith(f.Prefix))
	}
	if len(f.Providers) > 0 {
		ops := make([]expression.OperandBuilder, len(f.Providers))
		for i, p := range f.Providers {
			ops[i] = expression.Value(p)
		}
		if len(ops) == 1 {
			conds = append(conds, expression.Name("provider").Equal(ops[0]))
		} else {
			conds = append(conds, expression.Name("provider").In(ops[0], ops[1:]...))
		}
	}
	switch len(conds) {
	case 0:
		return expression.ConditionBuilder{}, false
	case 1:
		return conds[0], true
	default:
		return expression.And(conds[0], conds[1], conds[2:]...), true
	}
}

// TableAPI is what CreateTable needs.
type TableAPI interface {
	CreateTable(ctx context.Context, in *dynamodb.CreateTableInput, optFns ...func(*dynamodb.Options)) (*dynamodb.CreateTableOutput, error)
	DescribeTable(ctx context.Context, in *dynamodb.DescribeTableInput, optFns ...func(*dynamodb.Options)) (*dynamodb.DescribeTableOutput, error)
	UpdateTimeToLive(ctx context.Context, in *dynamodb.UpdateTimeToLiveInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateTimeToLiveOutput, error)
}

// CreateTable creates the table with the schema of docs/design.md §4 (for local
// mode and tests; in AWS the SAM template owns the table). An existing table
// is left as it is.
func CreateTable(ctx context.Context, api TableAPI, table string) error {
	_, err := api.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:   aws.String(table),
		BillingMode: ddbtypes.BillingModePayPerRequest,
		AttributeDefinitions: []ddbtypes.AttributeDefinition{
			{AttributeName: aws.String("pk"), AttributeType: ddbtypes.ScalarAttributeTypeS},
			{AttributeName: aws.String(shardAttr), AttributeType: ddbtypes.ScalarAttributeTypeS},
			{AttributeName: aws.String("refresh_at"), AttributeType: ddbtypes.ScalarAttributeTypeN},
		},
		KeySchema: []ddbtypes.KeySchemaElement{{AttributeName: aws.String("pk"), KeyType: ddbtypes.KeyTypeHash}},
		GlobalSecondaryIndexes: []ddbtypes.GlobalSecondaryIndex{{
			IndexName: aws.String(IndexName),
			KeySchema: []ddbtypes.KeySchemaElement{
				{AttributeName: aws.String(shardAttr), KeyType: ddbtypes.KeyTypeHash},
				{AttributeName: aws.String("refresh_at"), KeyType: ddbtypes.KeyTypeRange},
			},
			Projection: &ddbtypes.Projection{ProjectionType: ddbtypes.ProjectionTypeInclude, NonKeyAttributes: store.IndexAttributes},
		}},
	})
	var inUse *ddbtypes.ResourceInUseException
	if errors.As(err, &inUse) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create table %s: %w", table, err)
	}
	w := dynamodb.NewTableExistsWaiter(api)
	if err := w.Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(table)}, 30*time.Second); err != nil {
		return fmt.Errorf("create table %s: %w", table, err)
	}
	_, err = api.UpdateTimeToLive(ctx, &dynamodb.UpdateTimeToLiveInput{
		TableName:               aws.String(table),
		TimeToLiveSpecification: &ddbtypes.TimeToLiveSpecification{AttributeName: aws.String("expires_at"), Enabled: aws.Bool(true)},
	})
	if err != nil {
		return fmt.Errorf("enable TTL on %s: %w", table, err)
	}
	return nil
}
