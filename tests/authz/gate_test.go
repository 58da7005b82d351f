package authz

// The gate's defaults (docs/design.md §11): verified callers of the
// vendor's own account (or its consumer organization / accounts) for
// providers with no allowed_callers, operators who renew without taking
// tokens, revokes limited fleet-wide, and the refresher's manual run
// audited like any request.

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
)

// lastAudit is the last audit record for provider.
func (w *world) lastAudit(t *testing.T, providerName string) map[string]any {
	t.Helper()
	var last map[string]any
	for _, r := range w.audits(t) {
		if r["provider"] == providerName {
			last = r
		}
	}
	if last == nil {
		t.Fatalf("no audit record for %s", providerName)
	}
	return last
}

// TestUnverifiedDirectInvokeRefusedByDefault: a provider with no
// allowed_callers is vended only to verified callers of the vendor's
// account; a direct invoke without a proof is refused as no_identity
// before any store or upstream request, and audited.
func TestUnverifiedDirectInvokeRefusedByDefault(t *testing.T) {
	w := setupWith(t, map[string]string{"VENDOR_ACCOUNT_ID": account}, nil)
	ddb, up := w.ddb.n.Load(), w.up.Server.Stats().Total
	_, typ, msg := w.directInvoke(t, "demo-k2", nil)
	if typ != "CallerNotAllowed" || !strings.Contains(msg, "no_identity") {
		t.Fatalf("unverified direct invoke of an unrestricted provider: %s %q, want CallerNotAllowed no_identity", typ, msg)
	}
	if w.ddb.n.Load() != ddb || w.up.Server.Stats().Total != up {
		t.Fatal("a refused caller reached the store or the provider")
	}
	if r := w.lastAudit(t, "demo-k2"); r["outcome"] != "no_identity" || r["caller"] != "unverified" || r["path"] != "invoke" {
		t.Fatalf("audit: %v", r)
	}
	tok, typ, msg := w.directInvoke(t, "demo-k2", w.proof(t, w.allowed, w.moto.Endpoint, vendorID, time.Now()))
	if typ != "" || tok.AccessToken == "" {
		t.Fatalf("a verified caller of the vendor's account: %s %q", typ, msg)
	}
	if r := w.lastAudit(t, "demo-k2"); r["outcome"] != "granted" || r["caller"] != w.arns["allowed"] {
		t.Fatalf("audit: %v", r)
	}
}

// TestOtherAccountsNeedConfiguration: a verified caller of another account
// is refused unless its account or organization is configured; on direct
// invoke (STS gives no organization) the audit records the configured
// organization and says where it came from.
func TestOtherAccountsNeedConfiguration(t *testing.T) {
	const vendorAccount = accountB // the callers are in moto's 123456789012
	for _, c := range []struct {
		name    string
		env     map[string]string
		outcome string
		org     string
	}{
		{"own account only", map[string]string{}, "account_not_admitted", ""},
		{"consumer account", map[string]string{"CONSUMER_ACCOUNT_IDS": "111122223333, " + account}, "granted", ""},
		{"consumer organization", map[string]string{"CONSUMER_ORG_ID": "o-exampleorg1"}, "granted", "o-exampleorg1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.env["VENDOR_ACCOUNT_ID"] = vendorAccount
			w := setupWith(t, c.env, nil)
			// The vend function is in vendorAccount: its ARN names it, and
			// the proof names that function.
			fn := "arn:aws:lambda:us-east-1:" + vendorAccount + ":function:" + functionName
			raw, _ := json.Marshal(map[string]any{"provider": "demo-k2", "scope": "read", "identity": w.proof(t, w.allowed, w.moto.Endpoint, fn, time.Now())})
			w.invoke.Invoke(lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{InvokedFunctionArn: fn}), raw)
			r := w.lastAudit(t, "demo-k2")
			if r["outcome"] != c.outcome || r["caller"] != w.arns["allowed"] {
				t.Fatalf("audit: %v, want outcome %s", r, c.outcome)
			}
			if org, _ := r["caller_org"].(string); org != c.org || (c.org != "" && !strings.Contains(r["detail"].(string), "resource policy")) {
				t.Fatalf("caller_org %q (detail %v), want %q from the resource policy", org, r["detail"], c.org)
			}
		})
	}
}

// TestBadProofAuditedWhenGranted: with the explicit opt-in, an unverified
// caller is vended an unrestricted provider's token, and a proof that
// failed is still on the record.
func TestBadProofAuditedWhenGranted(t *testing.T) {
	w := setupWith(t, map[string]string{"ALLOW_UNVERIFIED_CALLERS": "true"}, nil)
	old := w.proof(t, w.allowed, w.moto.Endpoint, vendorID, time.Now().Add(-6*time.Minute))
	if _, typ, msg := w.directInvoke(t, "demo-k2", old); typ != "" {
		t.Fatalf("opt-in: %s %q", typ, msg)
	}
	r := w.lastAudit(t, "demo-k2")
	if r["outcome"] != "granted" || r["identity_problem"] != "proof_expired" || !strings.Contains(r["detail"].(string), "ALLOW_UNVERIFIED_CALLERS") {
		t.Fatalf("a granted request with an expired proof left: %v", r)
	}
	// The opt-in is for unrestricted providers only.
	if _, typ, _ := w.directInvoke(t, "payments", nil); typ != "CallerNotAllowed" {
		t.Fatalf("opt-in opened a restricted provider: %q", typ)
	}
}

// operators: payments' operator is not one of its consumers.
func operators(defs map[string]*provider.Definition) {
	pay := *defs["payments"]
	pay.AllowedCallers = []string{"arn:aws:iam::" + account + ":role/teams/eu/payments-app"}
	if err := pay.Validate(); err != nil {
		panic(err)
	}
	defs["payments"] = &pay
}

// TestOperatorCannotTakeToken: an operator who may not vend renews the key
// without receiving its token; without admin_callers no consumer may
// revoke or force a refresh.
func TestOperatorCannotTakeToken(t *testing.T) {
	w := setupWith(t, map[string]string{"VENDOR_ACCOUNT_ID": account}, operators)
	if r := w.http(t, apiDomain, "GET", "/v1/tokens/payments", w.arns["admin"]); r.StatusCode != 403 {
		t.Fatalf("operator GET: %d %s", r.StatusCode, r.Body)
	}
	before := w.up.Server.Requests(w.up.Defs["demo-k2"].ClientID)
	r := w.http(t, apiDomain, "POST", "/v1/tokens/payments/refresh", w.arns["admin"])
	if r.StatusCode != 202 || strings.Contains(r.Body, "access_token") || !strings.Contains(r.Body, `"renewed":true`) {
		t.Fatalf("forced refresh by an operator who may not vend: %d %s", r.StatusCode, r.Body)
	}
	if got := w.up.Server.Requests(w.up.Defs["demo-k2"].ClientID) - before; got != 1 {
		t.Fatalf("the renewal made %d upstream requests, want 1", got)
	}
	if a := w.lastAudit(t, "payments"); a["outcome"] != "granted" || a["operation"] != "refresh" || !strings.Contains(a["detail"].(string), "withheld") {
		t.Fatalf("audit: %v", a)
	}
	// The consumer gets the renewed token.
	if r := w.http(t, apiDomain, "GET", "/v1/tokens/payments", w.arns["allowed"]); r.StatusCode != 200 || w.up.Server.Requests(w.up.Defs["demo-k2"].ClientID)-before != 1 {
		t.Fatalf("consumer after the renewal: %d %s", r.StatusCode, r.Body)
	}
	// No admin_callers: nobody on the API may revoke or force a refresh.
	for _, route := range []string{"/v1/tokens/demo-k2/revoke", "/v1/tokens/demo-k2/refresh"} {
		if r := w.http(t, apiDomain, "POST", route, w.arns["allowed"]); r.StatusCode != 403 || !strings.Contains(r.Body, "no_operators") {
			t.Fatalf("%s without admin_callers: %d %s", route, r.StatusCode, r.Body)
		}
	}
}

// TestRevokeFlood: revokes are limited like forced refreshes, fleet-wide:
// twenty at once make one upstream revocation; a second revoke within 30 s
// is told when to retry.
func TestRevokeFlood(t *testing.T) {
	w := setupWith(t, map[string]string{"VENDOR_ACCOUNT_ID": account}, operators)
	id := w.up.Defs["demo-k2"].ClientID
	if r := w.http(t, apiDomain, "GET", "/v1/tokens/payments", w.arns["allowed"]); r.StatusCode != 200 {
		t.Fatal(r.Body)
	}
	var wg sync.WaitGroup
	codes := make([]int, 20)
	for i := range codes {
		wg.Go(func() {
			codes[i] = w.http(t, apiDomain, "POST", "/v1/tokens/payments/revoke", w.arns["admin"]).StatusCode
		})
	}
	wg.Wait()
	ok := 0
	for _, c := range codes {
		switch c {
		case 204:
			ok++
		case 503:
		default:
			t.Fatalf("revoke answered %d", c)
		}
	}
	if got := w.up.Server.Stats().Revokes[id]; got != 1 || ok != 1 {
		t.Fatalf("20 revokes at once: %d upstream revocations and %d 204s, want 1 and 1 (%v)", got, ok, codes)
	}
	if r := w.http(t, apiDomain, "GET", "/v1/tokens/payments", w.arns["allowed"]); r.StatusCode != 200 {
		t.Fatal(r.Body)
	}
	r := w.http(t, apiDomain, "POST", "/v1/tokens/payments/revoke", w.arns["admin"])
	if r.StatusCode != 503 || r.Headers["Retry-After"] == "" || w.up.Server.Stats().Revokes[id] != 1 {
		t.Fatalf("a revoke within 30 s: %d %v %s, %d upstream revocations", r.StatusCode, r.Headers, r.Body, w.up.Server.Stats().Revokes[id])
	}
}

// TestRefresherManualRunIsAudited: the refresher's {"force":true} event
// goes through the gate as the refresher path and leaves an audit record.
func TestRefresherManualRunIsAudited(t *testing.T) {
	w := setup(t)
	r, ok := any(w.a.Gate).(lambdafn.Refresher)
	if !ok {
		t.Fatal("the gate does not run the refresher: a manual run renews around it")
	}
	h := lambda.NewHandler(lambdafn.Refresh(r, time.Minute, nil, w.a.Log))
	ev, _ := json.Marshal(map[string]any{"providers": []string{"payments"}, "force": true})
	if _, err := h.Invoke(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	a := w.lastAudit(t, "payments")
	if a["path"] != "refresher" || a["operation"] != "refresh" || a["outcome"] != "granted" {
		t.Fatalf("audit: %v", a)
	}
}
