// Command smoke checks a deployed stack the way only AWS can: the table's
// TTL and refresh index, the alarms and the schedule exist; it vends
// through direct invoke and through the IAM-signed HTTP API, runs the
// refresher once, confirms each function logs into the log group the
// template declares, and waits for the fleet-wide (no-dimension) metric the
// alarms are built on to appear in CloudWatch. It prints a pass/fail table;
// tokens are never printed.
//
//	make smoke STACK=token-vendor [PROVIDER=k2]
//	go run ./tests/smoke -stack token-vendor [-provider k2] [-region eu-west-1] [-wait 4m]
//
// Without -provider it uses the first secret under the stack's
// ProviderSecretPrefix.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/cloudformation"
	cfntypes "github.com/aws/aws-sdk-go-v2/service/cloudformation/types"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/store"
)

// The AWS calls the smoke test makes, each declared as small as its use.
type (
	stacks interface {
		DescribeStacks(context.Context, *cloudformation.DescribeStacksInput, ...func(*cloudformation.Options)) (*cloudformation.DescribeStacksOutput, error)
		DescribeStackResources(context.Context, *cloudformation.DescribeStackResourcesInput, ...func(*cloudformation.Options)) (*cloudformation.DescribeStackResourcesOutput, error)
	}
	metrics interface {
		ListMetrics(context.Context, *cloudwatch.ListMetricsInput, ...func(*cloudwatch.Options)) (*cloudwatch.ListMetricsOutput, error)
		DescribeAlarms(context.Context, *cloudwatch.DescribeAlarmsInput, ...func(*cloudwatch.Options)) (*cloudwatch.DescribeAlarmsOutput, error)
	}
	tables interface {
		DescribeTimeToLive(context.Context, *dynamodb.DescribeTimeToLiveInput, ...func(*dynamodb.Options)) (*dynamodb.DescribeTimeToLiveOutput, error)
		DescribeTable(context.Context, *dynamodb.DescribeTableInput, ...func(*dynamodb.Options)) (*dynamodb.DescribeTableOutput, error)
	}
	rules interface {
		DescribeRule(context.Context, *eventbridge.DescribeRuleInput, ...func(*eventbridge.Options)) (*eventbridge.DescribeRuleOutput, error)
	}
	secrets interface {
		ListSecrets(context.Context, *secretsmanager.ListSecretsInput, ...func(*secretsmanager.Options)) (*secretsmanager.ListSecretsOutput, error)
	}
	logStreams interface {
		DescribeLogStreams(context.Context, *cloudwatchlogs.DescribeLogStreamsInput, ...func(*cloudwatchlogs.Options)) (*cloudwatchlogs.DescribeLogStreamsOutput, error)
	}
)

// deps are the smoke test's parts; main wires AWS clients, tests wire fakes.
type deps struct {
	stacks  stacks
	lambda  client.InvokeAPI
	metrics metrics
	logs    logStreams
	tables  tables
	rules   rules
	secrets secrets
	api     func(url string) client.Fetcher // the SigV4-signing HTTP API client
	// vend invokes the vend function with an identity proof (the vendor
	// refuses unverified direct invokes by default).
	vend  func(function string) client.Fetcher
	sleep func(context.Context, time.Duration) error
}

// config is what the operator chooses.
type settings struct {
	stack, provider, scope string
	wait                   time.Duration // for metrics to appear
}

// check is one line of the report.
type check struct {
	name   string
	ok     bool
	detail string
}

// namespace is the EMF namespace the functions publish under (template.yaml).
const namespace = "TokenVendor"

func run(ctx context.Context, d deps, s settings) []check {
	var out []check
	add := func(name string, err error, detail string) bool {
		if err != nil {
			detail = err.Error()
		}
		out = append(out, check{name, err == nil, detail})
		return err == nil
	}
	st, err := d.stacks.DescribeStacks(ctx, &cloudformation.DescribeStacksInput{StackName: aws.String(s.stack)})
	if err == nil && len(st.Stacks) == 0 {
		err = errors.New("no such stack")
	}
	if !add("stack "+s.stack, err, "") {
		return out
	}
	status := st.Stacks[0].StackStatus
	if status != cfntypes.StackStatusCreateComplete && status != cfntypes.StackStatusUpdateComplete {
		add("stack status", fmt.Errorf("%s: want CREATE_COMPLETE or UPDATE_COMPLETE", status), "")
		return out
	}
	outputs := map[string]string{}
	for _, o := range st.Stacks[0].Outputs {
		outputs[aws.ToString(o.OutputKey)] = aws.ToString(o.OutputValue)
	}
	res, err := d.stacks.DescribeStackResources(ctx, &cloudformation.DescribeStackResourcesInput{StackName: aws.String(s.stack)})
	if !add("stack resources", err, "") {
		return out
	}
	physical := map[string]string{}
	byType := map[string][]string{}
	for _, r := range res.StackResources {
		physical[aws.ToString(r.LogicalResourceId)] = aws.ToString(r.PhysicalResourceId)
		byType[aws.ToString(r.ResourceType)] = append(byType[aws.ToString(r.ResourceType)], aws.ToString(r.PhysicalResourceId))
	}
	logGroups := byType["AWS::Logs::LogGroup"]

	table := outputs["TableName"]
	add("table "+table+": TTL on expires_at", ttlErr(ctx, d.tables, table), "enabled")
	add("table "+table+": refresh index", indexErr(ctx, d.tables, table), "due index active")
	alarms := byType["AWS::CloudWatch::Alarm"]
	add(fmt.Sprintf("%d alarms exist", len(alarms)), alarmsErr(ctx, d.metrics, alarms), "")
	add("refresh schedule", scheduleErr(ctx, d.rules, byType["AWS::Events::Rule"]), "enabled")

	if s.provider == "" {
		var err error
		s.provider, err = firstProvider(ctx, d.secrets, stackParam(st.Stacks[0], "ProviderSecretPrefix"))
		if !add("a provider to vend", err, s.provider) {
			return out
		}
	}

	direct, err := d.vend(outputs["VendFunctionArn"]).Fetch(ctx, client.Request{Provider: s.provider, Scope: s.scope})
	add("direct invoke of VendFunction", tokenErr(direct, err), describe(direct))
	viaAPI, err := d.api(outputs["ApiUrl"]).Fetch(ctx, client.Request{Provider: s.provider, Scope: s.scope})
	add("GET /v1/tokens/"+s.provider+" through the HTTP API (SigV4)", tokenErr(viaAPI, err), describe(viaAPI))
	if direct != nil && viaAPI != nil {
		var err error
		if digest(direct.AccessToken) != digest(viaAPI.AccessToken) {
			err = errors.New("the two entry points vended different tokens: the cache is not shared")
		}
		add("both entry points share the cached token", err, "same token (sha256 "+digest(direct.AccessToken)+")")
	}

	add("refresher run", refresh(ctx, d.lambda, physical["RefresherFunction"], stackParam(st.Stacks[0], "RefreshFanOut") != "false"), "")

	for _, g := range logGroups {
		ls, err := d.logs.DescribeLogStreams(ctx, &cloudwatchlogs.DescribeLogStreamsInput{LogGroupName: aws.String(g), Limit: aws.Int32(1)})
		if err == nil && len(ls.LogStreams) == 0 {
			err = errors.New("no log stream: the function does not log into the group the template declares")
		}
		add("log group "+g, err, "has log streams")
	}

	add("fleet-wide metric "+namespace+"/Vends (no dimensions)", awaitMetric(ctx, d, "Vends", s.wait), "published; the alarms watch metrics of this shape")
	return out
}

func stackParam(st cfntypes.Stack, key string) string {
	for _, p := range st.Parameters {
		if aws.ToString(p.ParameterKey) == key {
			return aws.ToString(p.ParameterValue)
		}
	}
	return ""
}

func ttlErr(ctx context.Context, api tables, table string) error {
	out, err := api.DescribeTimeToLive(ctx, &dynamodb.DescribeTimeToLiveInput{TableName: aws.String(table)})
	if err != nil {
		return err
	}
	t := out.TimeToLiveDescription
	if t == nil || t.TimeToLiveStatus != ddbtypes.TimeToLiveStatusEnabled || aws.ToString(t.AttributeName) != "expires_at" {
		return fmt.Errorf("TTL is not enabled on expires_at: %+v", t)
	}
	return nil
}

func indexErr(ctx context.Context, api tables, table string) error {
	out, err := api.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(table)})
	if err != nil {
		return err
	}
	for _, g := range out.Table.GlobalSecondaryIndexes {
		if aws.ToString(g.IndexName) == "due" {
			if g.IndexStatus != ddbtypes.IndexStatusActive {
				return fmt.Errorf("index due is %s (backfilling after an upgrade?)", g.IndexStatus)
			}
			return nil
		}
	}
	return errors.New("no index named due: the refresher cannot find due keys")
}

func alarmsErr(ctx context.Context, api metrics, names []string) error {
	if len(names) == 0 {
		return errors.New("the stack has no alarms")
	}
	out, err := api.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{AlarmNames: names})
	if err != nil {
		return err
	}
	if len(out.MetricAlarms) != len(names) {
		return fmt.Errorf("%d of %d alarms found", len(out.MetricAlarms), len(names))
	}
	return nil
}

func scheduleErr(ctx context.Context, api rules, names []string) error {
	if len(names) != 1 {
		return fmt.Errorf("want one EventBridge rule in the stack, found %d", len(names))
	}
	out, err := api.DescribeRule(ctx, &eventbridge.DescribeRuleInput{Name: aws.String(names[0])})
	if err != nil {
		return err
	}
	if out.State != "ENABLED" || aws.ToString(out.ScheduleExpression) == "" {
		return fmt.Errorf("rule %s is %s with schedule %q", names[0], out.State, aws.ToString(out.ScheduleExpression))
	}
	return nil
}

// firstProvider names the first secret under the prefix.
func firstProvider(ctx context.Context, api secrets, prefix string) (string, error) {
	if prefix == "" {
		return "", errors.New("stack has no ProviderSecretPrefix parameter; pass -provider")
	}
	out, err := api.ListSecrets(ctx, &secretsmanager.ListSecretsInput{Filters: []smtypes.Filter{{Key: smtypes.FilterNameStringTypeName, Values: []string{prefix}}}})
	if err != nil {
		return "", fmt.Errorf("%w (pass -provider)", err)
	}
	for _, sec := range out.SecretList {
		if name, ok := strings.CutPrefix(aws.ToString(sec.Name), prefix); ok && name != "" {
			return name, nil
		}
	}
	return "", fmt.Errorf("no secret under %s: add a provider first", prefix)
}

// tokenErr requires a usable token.
func tokenErr(t *client.Token, err error) error {
	switch {
	case err != nil:
		return err
	case t.AccessToken == "" || t.ExpiresIn <= 0:
		return errors.New("answer has no usable token")
	}
	return nil
}

func describe(t *client.Token) string {
	if t == nil {
		return ""
	}
	return fmt.Sprintf("token sha256 %s, expires in %d s", digest(t.AccessToken), t.ExpiresIn)
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}

// scheduled is the event EventBridge sends the refresher.
const scheduled = `{"version":"0","id":"smoke","detail-type":"Scheduled Event","source":"aws.events","time":"1970-01-01T00:00:00Z","region":"us-east-1","resources":[],"detail":{}}`

// refresh runs the refresher as its schedule does. With fan-out, the run
// must have queued every shard's invocation: fewer means the refresher
// may not invoke itself (RefresherFanOutPolicy) and renews them alone.
func refresh(ctx context.Context, api client.InvokeAPI, fn string, fanOut bool) error {
	if fn == "" {
		return errors.New("stack has no RefresherFunction")
	}
	out, err := api.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String(fn), Payload: []byte(scheduled)})
	if err != nil {
		return err
	}
	if out.FunctionError != nil {
		return fmt.Errorf("function error: %s", out.Payload)
	}
	var r struct {
		Failed     *int `json:"failed"`
		Dispatched int  `json:"dispatched"`
	}
	if err := json.Unmarshal(out.Payload, &r); err != nil || r.Failed == nil {
		return fmt.Errorf("unexpected result %s", out.Payload)
	}
	if *r.Failed > 0 {
		return fmt.Errorf("%d renewals failed: %s", *r.Failed, out.Payload)
	}
	if fanOut && r.Dispatched != store.Shards {
		return fmt.Errorf("fan-out is on but %d of %d shard runs were queued (the refresher may not invoke itself?): %s", r.Dispatched, store.Shards, out.Payload)
	}
	return nil
}

// awaitMetric polls CloudWatch until metric exists with no dimensions; EMF
// metrics take a minute or two to appear.
func awaitMetric(ctx context.Context, d deps, metric string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		var seen [][]string
		p := cloudwatch.NewListMetricsPaginator(d.metrics, &cloudwatch.ListMetricsInput{Namespace: aws.String(namespace), MetricName: aws.String(metric)})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return err
			}
			for _, m := range page.Metrics {
				if len(m.Dimensions) == 0 {
					return nil
				}
				var names []string
				for _, dm := range m.Dimensions {
					names = append(names, aws.ToString(dm.Name))
				}
				seen = append(seen, names)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not published with no dimensions after %s (dimension sets seen: %v)", wait, seen)
		}
		if err := d.sleep(ctx, 15*time.Second); err != nil {
			return err
		}
	}
}

// report prints the pass/fail table and says whether everything passed.
func report(w io.Writer, cs []check) bool {
	ok := true
	width := len("check")
	for _, c := range cs {
		width = max(width, len(c.name))
	}
	fmt.Fprintf(w, "%-*s  %-6s  %s\n", width, "check", "result", "detail")
	for _, c := range cs {
		mark := "pass"
		if !c.ok {
			mark, ok = "FAIL", false
		}
		fmt.Fprintf(w, "%-*s  %-6s  %s\n", width, c.name, mark, c.detail)
	}
	return ok
}

func main() {
	var s settings
	region := flag.String("region", "", "AWS region (default: the SDK's)")
	flag.StringVar(&s.stack, "stack", "", "deployed stack name (required)")
	flag.StringVar(&s.provider, "provider", "", "a provider with a secret under the stack's prefix (default: the first one)")
	flag.StringVar(&s.scope, "scope", "", "scope to ask for")
	flag.DurationVar(&s.wait, "wait", 4*time.Minute, "how long to wait for metrics to appear")
	flag.Parse()
	if s.stack == "" {
		fmt.Fprintln(os.Stderr, "usage: smoke -stack NAME [-provider NAME] [-scope S] [-region R] [-wait D]")
		os.Exit(2)
	}
	ctx := context.Background()
	var opts []func(*config.LoadOptions) error
	if *region != "" {
		opts = append(opts, config.WithRegion(*region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "smoke:", err)
		os.Exit(1)
	}
	d := deps{
		stacks:  cloudformation.NewFromConfig(cfg),
		lambda:  lambda.NewFromConfig(cfg),
		metrics: cloudwatch.NewFromConfig(cfg),
		logs:    cloudwatchlogs.NewFromConfig(cfg),
		tables:  dynamodb.NewFromConfig(cfg),
		rules:   eventbridge.NewFromConfig(cfg),
		secrets: secretsmanager.NewFromConfig(cfg),
		api: func(url string) client.Fetcher {
			return client.NewHTTPFetcher(url, cfg.Credentials, cfg.Region)
		},
		vend: func(function string) client.Fetcher { return client.NewLambdaInvokerFromConfig(cfg, function) },
		sleep: func(ctx context.Context, d time.Duration) error {
			select {
			case <-time.After(d):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	}
	if !report(os.Stdout, run(ctx, d, s)) {
		os.Exit(1)
	}
}
