package extension

import (
	"encoding/json"
	"log/slog"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// TestExtensionCarriesTheConsumersIdentity: the built layer, running with
// a consumer role's credentials, proves that role to the vend function with
// no change to the Python consumer; moto's STS checks each signature. The
// listed role gets the restricted provider's token, another role is
// refused with caller_not_allowed, and the refusal costs the provider nothing.
func TestExtensionCarriesTheConsumersIdentity(t *testing.T) {
	ep := testenv.DynamoDB(t)
	if _, err := exec.LookPath("python3"); err != nil {
		testenv.SkipOrFail(t, "python3 is needed for the consumer function")
	}
	m := testenv.StartAuthMoto(t)
	_, allowed := m.Role(t, "/consumers/", "payments-fn", "payments-fn")
	_, other := m.Role(t, "/", "reports-fn", "reports-fn")
	up := vendtest.NewUpstream(t)
	pay := *up.Defs["demo-k2"]
	pay.Name, pay.AllowedCallers = "payments", []string{"arn:aws:iam::123456789012:role/consumers/payments-fn"}
	if err := pay.Validate(); err != nil {
		t.Fatal(err)
	}
	up.Defs["payments"] = &pay
	const fn = "tv-ext-VendFunction-AbC123" // the vendor id is the vend function's ARN
	st := dynamostore.New(testenv.DynamoDBClient(ep), testenv.NewTable(t, ep))
	defs := registry.NewStatic(up.Defs)
	core := vend.New(defs, vendtest.Client(nil), st, vend.Options{DisableRefreshAhead: true})
	var audit testenv.SyncBuffer
	svc := startVendService(t, gate.New(core, defs, slog.New(slog.NewJSONHandler(&audit, nil)), nil),
		&identity.Verifier{Endpoint: m.Endpoint, VendorID: "arn:aws:lambda:us-east-1:123456789012:function:" + fn})
	consumer := func(c aws.Credentials) *world {
		env := startConsumer(t, svc, map[string]string{
			"AWS_ACCESS_KEY_ID": c.AccessKeyID, "AWS_SECRET_ACCESS_KEY": c.SecretAccessKey, "AWS_SESSION_TOKEN": c.SessionToken,
			"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_STS": m.Endpoint,
			"TOKEN_VENDOR_FUNCTION": "arn:aws:lambda:us-east-1:123456789012:function:" + fn})
		return &world{env: env, vend: svc, up: up}
	}
	get := map[string]any{"path": "/v1/tokens/payments?scope=read"}
	good := consumer(allowed)
	if a := good.call(t, get); a.Status != 200 || a.TokenSHA256 == "" {
		t.Fatalf("listed role through the extension: %+v", a)
	}
	bad := consumer(other)
	if a := bad.call(t, get); a.Status != 403 || a.Error != "caller_not_allowed" || a.TokenSHA256 != "" {
		t.Fatalf("unlisted role through the extension: %+v", a)
	}
	if n := up.Server.Requests(pay.ClientID); n != 1 {
		t.Fatalf("%d upstream requests; the refusal must cost none", n)
	}
	// The audit names each role's verified session, as STS reported it.
	var callers []string
	deadline := time.Now().Add(5 * time.Second)
	for len(callers) < 2 && time.Now().Before(deadline) {
		callers = callers[:0]
		for _, line := range strings.Split(strings.TrimSpace(audit.String()), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "audit" {
				callers = append(callers, rec["caller"].(string)+" "+rec["outcome"].(string))
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	want := []string{"arn:aws:sts::123456789012:assumed-role/payments-fn/payments-fn granted", "arn:aws:sts::123456789012:assumed-role/reports-fn/reports-fn principal_not_listed"}
	if len(callers) != 2 || callers[0] != want[0] || callers[1] != want[1] {
		t.Fatalf("audit callers %q, want %q", callers, want)
	}
}
