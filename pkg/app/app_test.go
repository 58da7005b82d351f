package app

import (
	"slices"
	"strings"
	"testing"
)

// TestGateSettingsFromEnv: who may use providers without allowed_callers
// comes from the environment; a malformed value is an error naming it.
func TestGateSettingsFromEnv(t *testing.T) {
	env := map[string]string{"VENDOR_ACCOUNT_ID": "111111111111", "CONSUMER_ACCOUNT_IDS": "222222222222, 333333333333", "CONSUMER_ORG_ID": "o-exampleorg1"}
	c, err := FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	p := c.Policy()
	if !slices.Equal(p.Accounts, []string{"111111111111", "222222222222", "333333333333"}) || p.OrgID != "o-exampleorg1" || p.AllowUnverified {
		t.Fatalf("policy %+v", p)
	}
	for name, bad := range map[string]string{"CONSUMER_ACCOUNT_IDS": "12345,222222222222", "CONSUMER_ORG_ID": "org-1", "VENDOR_ACCOUNT_ID": "x", "ALLOW_UNVERIFIED_CALLERS": "maybe"} {
		if _, err := FromEnv(func(k string) string {
			if k == name {
				return bad
			}
			return ""
		}); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: %v, want an error naming it", name, bad, err)
		}
	}
	if c, _ := FromEnv(func(k string) string { return map[string]string{"ALLOW_UNVERIFIED_CALLERS": "true"}[k] }); !c.Policy().AllowUnverified {
		t.Error("ALLOW_UNVERIFIED_CALLERS=true not read")
	}
}
