package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/obs"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/pkg/wire"
	"github.com/token-vendor/token-vendor/tests/eventcases"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// deployment is the stack as the template wires it, on emulators.
type deployment struct {
	up      *vendtest.Upstream
	cfg     app.Config
	clients app.Clients
	logs    *bytes.Buffer
}

func newDeployment(t *testing.T) *deployment {
	ddbEP, motoEP := testenv.DynamoDB(t), testenv.Moto(t)
	up := vendtest.NewUpstream(t)
	sm := secretsClient(motoEP)
	prefix := "tv-" + testenv.RandomSuffix() + "/providers/"
	// The three seed styles under the names the sample events use.
	k2 := *up.Defs["demo-k2"]
	mobi := *up.Defs["demo-mobi"]
	dot := *up.Defs["demo-dot"]
	// The sample API events' principal is kopokopo's operator (refresh, revoke).
	k2.AdminCallers = []string{"arn:aws:iam::123456789012:role/payments-service"}
	for name, d := range map[string]*provider.Definition{"kopokopo": &k2, "mobifinance": &mobi, "dot-api": &dot} {
		putDefinition(t, sm, prefix+name, d)
	}
	kc := kms.NewFromConfig(testenv.Config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(motoEP) })
	key, err := kc.CreateKey(context.Background(), &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"TOKEN_TABLE":            testenv.NewTable(t, ddbEP),
		"PROVIDER_SECRET_PREFIX": prefix,
		"TOKEN_KMS_KEY_ID":       aws.ToString(key.KeyMetadata.KeyId),
		"LOG_LEVEL":              "debug",
		// The sample events' invokes carry no identity proof (one expires in
		// 5 minutes): identity is not their subject (tests/authz).
		"ALLOW_UNVERIFIED_CALLERS": "true",
	}
	cfg, err := app.FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	return &deployment{up: up, cfg: cfg, logs: &bytes.Buffer{}, clients: app.Clients{
		DynamoDB:       testenv.DynamoDBClient(ddbEP),
		SecretsManager: sm,
		KMS:            kc,
	}}
}

// instance is one cold Lambda instance of the deployment.
func (d *deployment) instance(t *testing.T) *app.App {
	a, err := app.New(d.cfg, d.clients, obs.NewLogger(d.logs, "debug"))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// invoke runs a handler through aws-lambda-go's own handler path, with a
// Lambda context and deadline as the runtime would give it.
func invoke(t *testing.T, h any, payload []byte) ([]byte, error) {
	t.Helper()
	ctx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{AwsRequestID: "req-" + testenv.RandomSuffix(),
		InvokedFunctionArn: "arn:aws:lambda:us-east-1:123456789012:function:token-vendor-VendFunction"})
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return lambda.NewHandler(h).Invoke(ctx, payload)
}

func readEvent(t *testing.T, name string) []byte {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "events", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEventsReplayThroughHandlers replays every file in events/ and checks
// the documented answer: each file is a known-good `sam local invoke` event.
func TestEventsReplayThroughHandlers(t *testing.T) {
	d := newDeployment(t)
	a := d.instance(t)
	api := app.Flushing(a, lambdafn.APIGateway(a.Handler))
	inv := app.Flushing(a, lambdafn.Invoke(a.Gate, a.Proofs, a.Log, nil))
	ref := app.Flushing(a, lambdafn.Refresh(a.Vendor, a.Config.RefreshInterval, nil, a.Log))

	fns := map[string]func(context.Context, json.RawMessage) (any, error){}
	wrap := func(h any) func(context.Context, json.RawMessage) (any, error) {
		return func(_ context.Context, raw json.RawMessage) (any, error) {
			out, err := invoke(t, h, raw)
			return out, err
		}
	}
	fns["ApiFunction"], fns["VendFunction"], fns["RefresherFunction"] = wrap(api), wrap(inv), wrap(ref)
	files, _ := filepath.Glob(filepath.Join(mustRoot(t), "events", "*.json"))
	covered := 0
	for _, f := range files {
		name := filepath.Base(f)
		c, ok := eventcases.For(name)
		switch {
		case ok:
			out, err := fns[c.Function](context.Background(), readEvent(t, name))
			payload, _ := out.([]byte)
			errType := ""
			if err != nil {
				errType = wire.ErrorType(err)
				payload = []byte(err.Error())
			}
			if cerr := c.Check(payload, errType); cerr != nil {
				t.Fatalf("%s: %v", name, cerr)
			}
		case name == "env.json":
			continue
		default:
			t.Fatalf("events/%s is not replayed by any test", name)
		}
		covered++
	}
	if covered < 20 {
		t.Fatalf("only %d events replayed", covered)
	}
	// Nothing bad input did reached the provider or leaked a secret into logs.
	for _, secret := range []string{"demo-k2-secret", "demo-dot-secret", "demo-mobi-secret"} {
		if strings.Contains(d.logs.String(), secret) {
			t.Fatal("a client secret reached the logs")
		}
	}
	if !strings.Contains(d.logs.String(), `"request_id":"req-`) {
		t.Fatal("logs do not carry the Lambda request id")
	}
}

func mustRoot(t *testing.T) string {
	r, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestInvokeAndHTTPShareTheCachedToken: a direct invoke and an HTTP request
// on two instances vend the same token, and the refresher renews it so the
// next caller gets the new one without an upstream call on its path.
func TestInvokeAndHTTPShareTheCachedToken(t *testing.T) {
	d := newDeployment(t)
	vendFn, apiFn, refresher := d.instance(t), d.instance(t), d.instance(t)
	out, err := invoke(t, lambdafn.Invoke(vendFn.Gate, vendFn.Proofs, vendFn.Log, nil), []byte(`{"provider":"kopokopo"}`))
	if err != nil {
		t.Fatal(err)
	}
	var viaInvoke map[string]any
	json.Unmarshal(out, &viaInvoke)
	ev := readEvent(t, "api-get-token.json")
	out, err = invoke(t, lambdafn.APIGateway(apiFn.Handler), ev)
	if err != nil {
		t.Fatal(err)
	}
	var resp events.APIGatewayV2HTTPResponse
	json.Unmarshal(out, &resp)
	var viaHTTP map[string]any
	json.Unmarshal([]byte(resp.Body), &viaHTTP)
	if viaInvoke["access_token"] == nil || viaInvoke["access_token"] != viaHTTP["access_token"] {
		t.Fatal("invoke and HTTP vended different tokens")
	}
	k2 := "demo-k2-client"
	if n := d.up.Server.Requests(k2); n != 1 {
		t.Fatalf("upstream requests %d", n)
	}
	// A token is never renewed ahead in the first half of its life (a
	// scheduled run skips it), so the operator's forced run stands in for
	// the schedule here; vendtest's RefresherRenewsDueKeys covers the
	// schedule on a fake clock.
	out, err = invoke(t, lambdafn.Refresh(refresher.Vendor, refresher.Config.RefreshInterval, nil, refresher.Log), readEvent(t, "refresh-manual.json"))
	if err != nil || !strings.Contains(string(out), `"refreshed":1`) {
		t.Fatalf("refresher: %s %v", out, err)
	}
	if n := d.up.Server.Requests(k2); n != 2 {
		t.Fatalf("refresher made %d upstream requests in all", n-1)
	}
	cold := d.instance(t) // a new instance: no L1
	out, err = invoke(t, lambdafn.Invoke(cold.Gate, cold.Proofs, cold.Log, nil), []byte(`{"provider":"kopokopo"}`))
	if err != nil {
		t.Fatal(err)
	}
	var after map[string]any
	json.Unmarshal(out, &after)
	if after["access_token"] == viaInvoke["access_token"] || d.up.Server.Requests(k2) != 2 {
		t.Fatalf("caller after the refresh: renewed=%v upstream=%d", after["access_token"] != viaInvoke["access_token"], d.up.Server.Requests(k2))
	}
	if !d.up.Server.Valid(after["access_token"].(string)) {
		t.Fatal("vended token not valid at the provider")
	}
}
