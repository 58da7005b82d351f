package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudformation"
	cfntypes "github.com/aws/aws-sdk-go-v2/service/cloudformation/types"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	logtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs/types"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"

	"github.com/token-vendor/token-vendor/pkg/client"
)

const secretToken = "tok-CANARY-never-printed"

// fakeAWS is a deployed stack as the AWS APIs would describe it; each
// field spoils one thing.
type fakeAWS struct {
	status        cfntypes.StackStatus
	apiToken      string
	refresherOut  string
	emptyLogGroup string
	dimSets       [][]string // what ListMetrics returns for Vends
	ttl           ddbtypes.TimeToLiveStatus
	index         ddbtypes.IndexStatus // "" for no index
	alarmsFound   int
	ruleState     ebtypes.RuleState
	secretNames   []string
	invoked       []string
	fanOut        string // the stack's RefreshFanOut
}

func healthy() *fakeAWS {
	return &fakeAWS{status: cfntypes.StackStatusUpdateComplete, apiToken: secretToken,
		refresherOut: `{"due":0,"refreshed":0,"failed":0,"skipped":0,"deferred":0,"retired":0,"lag_seconds":0,"dispatched":8}`,
		dimSets:      [][]string{{"Provider", "Source"}, {"Source"}, {}},
		ttl:          ddbtypes.TimeToLiveStatusEnabled, index: ddbtypes.IndexStatusActive, alarmsFound: 2,
		ruleState: ebtypes.RuleStateEnabled, secretNames: []string{"token-vendor/providers/k2"}, fanOut: "true"}
}

func (f *fakeAWS) DescribeStacks(_ context.Context, in *cloudformation.DescribeStacksInput, _ ...func(*cloudformation.Options)) (*cloudformation.DescribeStacksOutput, error) {
	return &cloudformation.DescribeStacksOutput{Stacks: []cfntypes.Stack{{StackName: in.StackName, StackStatus: f.status, Outputs: []cfntypes.Output{
		{OutputKey: aws.String("ApiUrl"), OutputValue: aws.String("https://abc.execute-api.eu-west-1.amazonaws.com")},
		{OutputKey: aws.String("VendFunctionArn"), OutputValue: aws.String("arn:aws:lambda:eu-west-1:1:function:tv-VendFunction")},
		{OutputKey: aws.String("TableName"), OutputValue: aws.String("tv-TokenTable")},
	}, Parameters: []cfntypes.Parameter{{ParameterKey: aws.String("ProviderSecretPrefix"), ParameterValue: aws.String("token-vendor/providers/")},
		{ParameterKey: aws.String("RefreshFanOut"), ParameterValue: aws.String(f.fanOut)}}}}}, nil
}

func (f *fakeAWS) DescribeStackResources(context.Context, *cloudformation.DescribeStackResourcesInput, ...func(*cloudformation.Options)) (*cloudformation.DescribeStackResourcesOutput, error) {
	r := func(logical, typ, phys string) cfntypes.StackResource {
		return cfntypes.StackResource{LogicalResourceId: aws.String(logical), ResourceType: aws.String(typ), PhysicalResourceId: aws.String(phys)}
	}
	return &cloudformation.DescribeStackResourcesOutput{StackResources: []cfntypes.StackResource{
		r("RefresherFunction", "AWS::Lambda::Function", "tv-RefresherFunction"),
		r("VendLogGroup", "AWS::Logs::LogGroup", "/aws/lambda/tv-VendFunction"),
		r("RefresherLogGroup", "AWS::Logs::LogGroup", "/aws/lambda/tv-RefresherFunction"),
		r("RefresherErrorsAlarm", "AWS::CloudWatch::Alarm", "tv-RefresherErrorsAlarm"),
		r("NearExpiryAlarm", "AWS::CloudWatch::Alarm", "tv-NearExpiryAlarm"),
		r("RefresherFunctionSchedule", "AWS::Events::Rule", "tv-RefresherFunctionSchedule"),
	}}, nil
}

func (f *fakeAWS) DescribeAlarms(_ context.Context, in *cloudwatch.DescribeAlarmsInput, _ ...func(*cloudwatch.Options)) (*cloudwatch.DescribeAlarmsOutput, error) {
	out := &cloudwatch.DescribeAlarmsOutput{}
	for _, n := range in.AlarmNames[:min(f.alarmsFound, len(in.AlarmNames))] {
		out.MetricAlarms = append(out.MetricAlarms, cwtypes.MetricAlarm{AlarmName: aws.String(n)})
	}
	return out, nil
}

func (f *fakeAWS) DescribeTimeToLive(context.Context, *dynamodb.DescribeTimeToLiveInput, ...func(*dynamodb.Options)) (*dynamodb.DescribeTimeToLiveOutput, error) {
	return &dynamodb.DescribeTimeToLiveOutput{TimeToLiveDescription: &ddbtypes.TimeToLiveDescription{AttributeName: aws.String("expires_at"), TimeToLiveStatus: f.ttl}}, nil
}

func (f *fakeAWS) DescribeTable(context.Context, *dynamodb.DescribeTableInput, ...func(*dynamodb.Options)) (*dynamodb.DescribeTableOutput, error) {
	td := &ddbtypes.TableDescription{}
	if f.index != "" {
		td.GlobalSecondaryIndexes = []ddbtypes.GlobalSecondaryIndexDescription{{IndexName: aws.String("due"), IndexStatus: f.index}}
	}
	return &dynamodb.DescribeTableOutput{Table: td}, nil
}

func (f *fakeAWS) DescribeRule(_ context.Context, in *eventbridge.DescribeRuleInput, _ ...func(*eventbridge.Options)) (*eventbridge.DescribeRuleOutput, error) {
	return &eventbridge.DescribeRuleOutput{Name: in.Name, State: f.ruleState, ScheduleExpression: aws.String("rate(1 minute)")}, nil
}

func (f *fakeAWS) ListSecrets(context.Context, *secretsmanager.ListSecretsInput, ...func(*secretsmanager.Options)) (*secretsmanager.ListSecretsOutput, error) {
	out := &secretsmanager.ListSecretsOutput{}
	for _, n := range f.secretNames {
		out.SecretList = append(out.SecretList, smtypes.SecretListEntry{Name: aws.String(n)})
	}
	return out, nil
}

func (f *fakeAWS) Invoke(_ context.Context, in *lambda.InvokeInput, _ ...func(*lambda.Options)) (*lambda.InvokeOutput, error) {
	fn := aws.ToString(in.FunctionName)
	f.invoked = append(f.invoked, fn)
	if strings.Contains(fn, "Refresher") {
		return &lambda.InvokeOutput{Payload: []byte(f.refresherOut)}, nil
	}
	b, _ := json.Marshal(client.Token{Provider: "k2", AccessToken: secretToken, TokenType: "Bearer", ExpiresIn: 3000})
	return &lambda.InvokeOutput{Payload: b}, nil
}

func (f *fakeAWS) Fetch(context.Context, client.Request) (*client.Token, error) {
	if f.apiToken == "" {
		return nil, &client.Error{Status: 403, Code: "Forbidden", Message: "missing authentication token"}
	}
	return &client.Token{Provider: "k2", AccessToken: f.apiToken, ExpiresIn: 2999}, nil
}

func (f *fakeAWS) ListMetrics(context.Context, *cloudwatch.ListMetricsInput, ...func(*cloudwatch.Options)) (*cloudwatch.ListMetricsOutput, error) {
	out := &cloudwatch.ListMetricsOutput{}
	for _, set := range f.dimSets {
		m := cwtypes.Metric{Namespace: aws.String(namespace), MetricName: aws.String("Vends")}
		for _, d := range set {
			m.Dimensions = append(m.Dimensions, cwtypes.Dimension{Name: aws.String(d), Value: aws.String("x")})
		}
		out.Metrics = append(out.Metrics, m)
	}
	return out, nil
}

func (f *fakeAWS) DescribeLogStreams(_ context.Context, in *cloudwatchlogs.DescribeLogStreamsInput, _ ...func(*cloudwatchlogs.Options)) (*cloudwatchlogs.DescribeLogStreamsOutput, error) {
	if aws.ToString(in.LogGroupName) == f.emptyLogGroup {
		return &cloudwatchlogs.DescribeLogStreamsOutput{}, nil
	}
	return &cloudwatchlogs.DescribeLogStreamsOutput{LogStreams: []logtypes.LogStream{{LogStreamName: aws.String("2026/11/23/[$LATEST]abc")}}}, nil
}

func (f *fakeAWS) deps() deps {
	return deps{stacks: f, lambda: f, metrics: f, logs: f, tables: f, rules: f, secrets: f, api: func(string) client.Fetcher { return f },
		vend:  func(fn string) client.Fetcher { return client.NewLambdaInvoker(f, fn) },
		sleep: func(ctx context.Context, _ time.Duration) error { return ctx.Err() }}
}

func smoke(t *testing.T, f *fakeAWS) (bool, string) {
	t.Helper()
	return smokeWith(t, f, "k2")
}

func smokeWith(t *testing.T, f *fakeAWS, provider string) (bool, string) {
	t.Helper()
	var out bytes.Buffer
	ok := report(&out, run(context.Background(), f.deps(), settings{stack: "tv", provider: provider, wait: 0}))
	if strings.Contains(out.String(), secretToken) {
		t.Fatalf("the report prints a token:\n%s", out.String())
	}
	return ok, out.String()
}

func TestHealthyStackPasses(t *testing.T) {
	f := healthy()
	ok, out := smoke(t, f)
	if !ok {
		t.Fatalf("a healthy stack failed:\n%s", out)
	}
	for _, want := range []string{"TTL on expires_at", "refresh index", "2 alarms exist", "refresh schedule", "direct invoke", "HTTP API", "share the cached token", "refresher run", "/aws/lambda/tv-VendFunction", "no dimensions"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if len(f.invoked) != 2 || !strings.Contains(f.invoked[1], "RefresherFunction") {
		t.Fatalf("invoked %v, want the vend function then the refresher", f.invoked)
	}
}

// Each broken stack fails, and the report names the failed check.
func TestBrokenStacksFail(t *testing.T) {
	cases := map[string]struct {
		spoil func(*fakeAWS)
		want  string
	}{
		"stack rolled back":           {func(f *fakeAWS) { f.status = cfntypes.StackStatusUpdateRollbackComplete }, "stack status"},
		"TTL off":                     {func(f *fakeAWS) { f.ttl = ddbtypes.TimeToLiveStatusDisabled }, "table tv-TokenTable: TTL"},
		"no refresh index":            {func(f *fakeAWS) { f.index = "" }, "table tv-TokenTable: refresh index"},
		"index still backfilling":     {func(f *fakeAWS) { f.index = ddbtypes.IndexStatusCreating }, "table tv-TokenTable: refresh index"},
		"an alarm missing":            {func(f *fakeAWS) { f.alarmsFound = 1 }, "2 alarms exist"},
		"schedule disabled":           {func(f *fakeAWS) { f.ruleState = ebtypes.RuleStateDisabled }, "refresh schedule"},
		"API refuses the signed call": {func(f *fakeAWS) { f.apiToken = "" }, "GET /v1/tokens/k2"},
		"cache not shared":            {func(f *fakeAWS) { f.apiToken = "another-token" }, "both entry points"},
		"refresher failed keys":       {func(f *fakeAWS) { f.refresherOut = `{"refreshed":0,"failed":3}` }, "refresher run"},
		"refresher errored":           {func(f *fakeAWS) { f.refresherOut = `{"errorType":"Runtime.ExitError"}` }, "refresher run"},
		"fan-out not queued": {func(f *fakeAWS) {
			f.refresherOut = `{"due":3,"refreshed":3,"failed":0,"skipped":0,"deferred":0,"retired":0,"lag_seconds":0}`
		}, "refresher run"},
		"function logs elsewhere": {func(f *fakeAWS) { f.emptyLogGroup = "/aws/lambda/tv-RefresherFunction" }, "log group /aws/lambda/tv-RefresherFunction"},
		// The defect issue 11 names: metrics only per provider, so the alarms' metric never exists.
		"metric only per provider": {func(f *fakeAWS) { f.dimSets = [][]string{{"Provider", "Source"}} }, "fleet-wide metric"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f := healthy()
			c.spoil(f)
			ok, out := smoke(t, f)
			if ok || !failed(out, c.want) {
				t.Fatalf("want the check %q to fail, got ok=%v:\n%s", c.want, ok, out)
			}
		})
	}
}

// failed reports whether the table has a FAIL row whose check starts with name.
func failed(table, name string) bool {
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, name) && strings.Contains(line, " FAIL ") {
			return true
		}
	}
	return false
}

// Without -provider, the first secret under the stack's prefix is used;
// with none, the report says to add one.
func TestProviderFromTheSecretPrefix(t *testing.T) {
	f := healthy()
	if ok, out := smokeWith(t, f, ""); !ok || !strings.Contains(out, "a provider to vend") || !strings.Contains(out, "k2") {
		t.Fatalf("provider not found from the prefix:\n%s", out)
	}
	f.secretNames = nil
	if ok, out := smokeWith(t, f, ""); ok || !failed(out, "a provider to vend") {
		t.Fatalf("want a failure naming the missing provider:\n%s", out)
	}
}

func TestMetricWaitHonoursContext(t *testing.T) {
	f := healthy()
	f.dimSets = nil
	d := f.deps()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := awaitMetric(ctx, d, "Vends", time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("want the wait cut short by the context, got %v", err)
	}
}

// With RefreshFanOut=false the scheduled run renews every shard itself and
// queues nothing: that is healthy.
func TestSmokeWithoutFanOut(t *testing.T) {
	f := healthy()
	f.fanOut = "false"
	f.refresherOut = `{"due":3,"refreshed":3,"failed":0,"skipped":0,"deferred":0,"retired":0,"lag_seconds":0}`
	if ok, out := smoke(t, f); !ok {
		t.Fatalf("a stack without fan-out failed the smoke check:\n%s", out)
	}
}
