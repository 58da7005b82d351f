package deploy

import "testing"

// TestJWKSRouteThrottled: the one route without IAM has its own throttle
// (HTTP API route settings), so probing provider names is rate-limited
// before it reaches the function.
func TestJWKSRouteThrottled(t *testing.T) {
	root, _ := loadTemplate(t)
	found := false
	for name, api := range resources(t, root, "AWS::Serverless::HttpApi") {
		rs := get(api, "Properties", "RouteSettings", "GET /v1/providers/{provider}/jwks.json")
		if rs == nil {
			t.Errorf("HttpApi %s: no route settings for the JWKS route", name)
			continue
		}
		rate, burst := get(rs, "ThrottlingRateLimit"), get(rs, "ThrottlingBurstLimit")
		if rate == nil || burst == nil || rate.Value == "" || burst.Value == "" {
			t.Errorf("HttpApi %s: the JWKS route has no rate and burst limit", name)
		}
		found = true
	}
	if !found {
		t.Fatal("no HttpApi")
	}
}

// TestGateSettingsWired: the functions get who may use providers without
// allowed_callers from the stack (its account, the consumer organization
// and accounts), unverified callers stay refused unless the stack says
// otherwise, and the api function has the listing's cursor key.
func TestGateSettingsWired(t *testing.T) {
	root, _ := loadTemplate(t)
	vars := get(root, "Globals", "Function", "Environment", "Variables")
	for env, want := range map[string]string{"VENDOR_ACCOUNT_ID": "AWS::AccountId", "CONSUMER_ORG_ID": "ConsumerOrgId", "ALLOW_UNVERIFIED_CALLERS": "AllowUnverifiedCallers"} {
		if v := get(vars, env); v == nil || v.Tag != "!Ref" || v.Value != want {
			t.Errorf("%s: want !Ref %s", env, want)
		}
	}
	if v := get(vars, "CONSUMER_ACCOUNT_IDS"); v == nil || v.Tag != "!Join" {
		t.Error("CONSUMER_ACCOUNT_IDS: want !Join of ConsumerAccountIds")
	}
	if d := get(root, "Parameters", "AllowUnverifiedCallers", "Default"); d == nil || d.Value != "false" {
		t.Error("AllowUnverifiedCallers must default to false")
	}
	if v := get(root, "Resources", "ApiFunction", "Properties", "Environment", "Variables", "CURSOR_KEY_SECRET_ARN"); v == nil || v.Value != "CursorKey" {
		t.Error("ApiFunction: CURSOR_KEY_SECRET_ARN must be the CursorKey secret")
	}
}
