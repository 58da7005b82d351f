package authz_test

import (
	"errors"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/provider"
)

func def(t *testing.T, allowed, admins []string) *provider.Definition {
	t.Helper()
	d := &provider.Definition{Name: "p", TokenURL: "https://auth.example.com/token", ClientID: "c", ClientSecret: "s", AllowedCallers: allowed, AdminCallers: admins}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestPolicyDecisions: who may do what, per path, with the vendor-wide
// policy (docs/design.md §11).
func TestPolicyDecisions(t *testing.T) {
	const own, consumer, stranger = "111111111111", "222222222222", "333333333333"
	role := func(acct string) string { return "arn:aws:sts::" + acct + ":assumed-role/app/s" }
	open := def(t, nil, nil)
	ops := def(t, nil, []string{"arn:aws:iam::" + own + ":role/ops"})
	restricted := def(t, []string{"arn:aws:iam::" + own + ":role/app"}, nil)
	p := authz.Policy{Accounts: []string{own, consumer}, OrgID: "o-exampleorg1"}
	verified := func(path identity.Path, acct, org string) identity.Caller {
		return identity.FromIAM(path, role(acct), acct, org)
	}
	bad := identity.Caller{Path: identity.PathInvoke, Problem: identity.ProofExpired, Detail: "old"}
	for _, c := range []struct {
		name   string
		p      authz.Policy
		caller identity.Caller
		def    *provider.Definition
		op     authz.Op
		reason string // "" admitted
	}{
		{"own account", p, verified(identity.PathAPI, own, ""), open, authz.OpVend, ""},
		{"consumer account", p, verified(identity.PathInvoke, consumer, ""), open, authz.OpVend, ""},
		{"org via API Gateway", p, verified(identity.PathAPI, stranger, "o-exampleorg1"), open, authz.OpVend, ""},
		{"another org via API Gateway", p, verified(identity.PathAPI, stranger, "o-otherorg123"), open, authz.OpVend, authz.AccountNotAdmitted},
		{"org on invoke, from the resource policy", p, verified(identity.PathInvoke, stranger, ""), open, authz.OpVend, ""},
		{"stranger without an org configured", authz.Policy{Accounts: []string{own}}, verified(identity.PathInvoke, stranger, ""), open, authz.OpVend, authz.AccountNotAdmitted},
		{"no proof", p, identity.Anonymous(identity.PathInvoke, "none"), open, authz.OpVend, identity.NoIdentity},
		{"bad proof", p, bad, open, authz.OpVend, identity.ProofExpired},
		{"bad proof, opt-in", authz.Policy{AllowUnverified: true}, bad, open, authz.OpVend, ""},
		{"opt-in does not open restricted", authz.Policy{AllowUnverified: true}, bad, restricted, authz.OpVend, identity.ProofExpired},
		{"serve", p, identity.Anonymous(identity.PathLocal, "local"), open, authz.OpVend, ""},
		{"serve, restricted", p, identity.Anonymous(identity.PathLocal, "local"), restricted, authz.OpVend, identity.NoIdentity},
		{"serve, revoke", p, identity.Anonymous(identity.PathLocal, "local"), open, authz.OpRevoke, ""},
		{"revoke without admin_callers", p, verified(identity.PathAPI, own, ""), open, authz.OpRevoke, authz.NoOperators},
		{"refresh without admin_callers, restricted", p, verified(identity.PathAPI, own, ""), restricted, authz.OpRefresh, authz.NoOperators},
		{"operator", p, identity.FromIAM(identity.PathAPI, "arn:aws:sts::"+own+":assumed-role/ops/s", own, ""), ops, authz.OpRevoke, ""},
		{"not the operator", p, verified(identity.PathAPI, own, ""), ops, authz.OpRefresh, authz.PrincipalNotListed},
		{"cli", p, identity.Caller{Path: authz.PathCLI}, restricted, authz.OpVend, ""},
		{"refresher", p, identity.Caller{Path: authz.PathRefresher}, restricted, authz.OpRefresh, ""},
	} {
		adm, err := c.p.Decide(c.caller, c.def, c.op)
		var na *authz.NotAllowedError
		switch {
		case c.reason == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.reason != "" && (!errors.As(err, &na) || na.Reason != c.reason):
			t.Errorf("%s: got %v, want refusal %s", c.name, err, c.reason)
		}
		if c.name == "org on invoke, from the resource policy" && (adm.Caller.OrgID != "o-exampleorg1" || adm.Note == "") {
			t.Errorf("%s: audit caller %+v note %q", c.name, adm.Caller, adm.Note)
		}
		if c.name == "bad proof, opt-in" && adm.Note == "" {
			t.Errorf("%s: granted without a note of the proof's problem", c.name)
		}
	}
}
