// Package eventcases is what each file in events/ must produce: which
// function takes it and the documented answer. The handler-path replay
// (tests/integration) and the bootstrap replay (tests/lambdart) share it.
package eventcases

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"
)

// Case is one event file's function and expected answer.
type Case struct {
	Function string // logical id in template.yaml
	Status   int    // API: HTTP status
	Code     string // API: error code; invoke: errorType ("" for success)
}

var cases = map[string]Case{
	"api-get-token.json":                   {"ApiFunction", 200, ""},
	"api-get-token-scoped.json":            {"ApiFunction", 200, ""},
	"api-get-token-scope-not-allowed.json": {"ApiFunction", 403, "scope_not_allowed"},
	"api-get-token-bad-scope.json":         {"ApiFunction", 400, "invalid_request"},
	"api-get-token-bad-min-ttl.json":       {"ApiFunction", 400, "invalid_request"},
	"api-get-token-unknown-param.json":     {"ApiFunction", 400, "invalid_request"},
	"api-get-token-unknown-provider.json":  {"ApiFunction", 404, "unknown_provider"},
	"api-refresh.json":                     {"ApiFunction", 200, ""},
	"api-rejected.json":                    {"ApiFunction", 200, ""},
	"api-rejected-bad-body.json":           {"ApiFunction", 400, "invalid_request"},
	"api-revoke.json":                      {"ApiFunction", 204, ""},
	"api-providers.json":                   {"ApiFunction", 200, ""},
	"api-healthz.json":                     {"ApiFunction", 200, ""},
	"api-unknown-route.json":               {"ApiFunction", 404, "not_found"},
	"api-wrong-method.json":                {"ApiFunction", 405, "method_not_allowed"},
	"invoke.json":                          {"VendFunction", 0, ""},
	"invoke-scoped.json":                   {"VendFunction", 0, ""},
	"invoke-rejected.json":                 {"VendFunction", 0, ""},
	"invoke-unknown-field.json":            {"VendFunction", 0, "InvalidRequest"},
	"invoke-missing-provider.json":         {"VendFunction", 0, "InvalidRequest"},
	"invoke-bad-min-ttl.json":              {"VendFunction", 0, "InvalidRequest"},
	"schedule.json":                        {"RefresherFunction", 0, ""},
	"refresh-manual.json":                  {"RefresherFunction", 0, ""},
}

// For returns the case for an events/ file name; false for env.json and
// unknown files.
func For(name string) (Case, bool) {
	c, ok := cases[name]
	return c, ok
}

// Check compares a function's answer with the case: the response payload,
// and the errorType the runtime reported ("" when none).
func (c Case) Check(payload []byte, errorType string) error {
	switch c.Function {
	case "ApiFunction":
		if errorType != "" {
			return fmt.Errorf("function error %s: %s", errorType, payload)
		}
		var resp events.APIGatewayV2HTTPResponse
		if err := json.Unmarshal(payload, &resp); err != nil {
			return fmt.Errorf("not an HTTP API response: %s", payload)
		}
		if resp.StatusCode != c.Status {
			return fmt.Errorf("status %d, want %d: %s", resp.StatusCode, c.Status, resp.Body)
		}
		if resp.Headers["Cache-Control"] != "no-store" || resp.Headers["Pragma"] != "no-cache" {
			return fmt.Errorf("missing no-store headers %v", resp.Headers)
		}
		if resp.StatusCode == 204 {
			return nil
		}
		var body map[string]any
		if err := json.Unmarshal([]byte(resp.Body), &body); err != nil {
			return fmt.Errorf("body not JSON: %q", resp.Body)
		}
		if c.Code != "" && (body["error"] != c.Code || body["error_description"] == "") {
			return fmt.Errorf("error body %v, want %s", body, c.Code)
		}
		if c.Status == 200 && body["access_token"] != nil {
			return TokenJSON(body)
		}
		return nil
	case "VendFunction":
		if errorType != c.Code {
			return fmt.Errorf("errorType %q, want %q: %s", errorType, c.Code, payload)
		}
		if c.Code != "" {
			return nil
		}
		var body map[string]any
		if err := json.Unmarshal(payload, &body); err != nil {
			return fmt.Errorf("not JSON: %s", payload)
		}
		return TokenJSON(body)
	default:
		if errorType != "" {
			return fmt.Errorf("function error %s: %s", errorType, payload)
		}
		var res map[string]int
		if json.Unmarshal(payload, &res) != nil {
			return fmt.Errorf("not a refresh result: %s", payload)
		}
		for _, k := range []string{"due", "refreshed", "failed", "skipped", "deferred", "retired", "lag_seconds"} {
			if _, ok := res[k]; !ok {
				return fmt.Errorf("refresh result lacks %s: %s", k, payload)
			}
		}
		return nil
	}
}

// TokenJSON checks the token JSON contract.
func TokenJSON(body map[string]any) error {
	for _, k := range []string{"provider", "access_token", "token_type", "expires_in", "expires_at", "scope"} {
		if _, ok := body[k]; !ok {
			return fmt.Errorf("token JSON lacks %s: %v", k, body)
		}
	}
	at, _ := body["expires_at"].(string)
	if _, err := time.Parse(time.RFC3339, at); err != nil || !strings.HasSuffix(at, "Z") {
		return fmt.Errorf("expires_at %v", body["expires_at"])
	}
	if in, _ := body["expires_in"].(float64); in < 60 {
		return fmt.Errorf("expires_in %v", body["expires_in"])
	}
	return nil
}
