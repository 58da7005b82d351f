package httpapi_test

import "testing"

// The token route's DPoP parameters: without a proof-signing vendor they
// are refused clearly; one without the other is refused; a scope that
// merely contains "dpop_" is an ordinary token request.
func TestTokenRouteProofParameters(t *testing.T) {
	e := newEnv(t)
	for _, q := range []string{"dpop_htm=GET&dpop_htu=https%3A%2F%2Frs.example%2F", "dpop_htm=GET", "dpop_nonce=n"} {
		resp, m := e.do("GET", "/v1/tokens/demo-dot?"+q, "")
		if resp.StatusCode != 400 || m["error"] != "invalid_request" {
			t.Errorf("%s: %d %v", q, resp.StatusCode, m)
		}
	}
	resp, m := e.do("GET", "/v1/tokens/demo-dot?scope=dpop_read", "")
	if resp.StatusCode == 400 && m["error_description"] != nil && m["error"] == "invalid_request" {
		if d, _ := m["error_description"].(string); len(d) > 0 && (d == "a DPoP proof needs both dpop_htm and dpop_htu" || d == "this vendor signs no DPoP proofs") {
			t.Fatalf("a scope containing dpop_ was taken for a proof request: %v", m)
		}
	}
}
