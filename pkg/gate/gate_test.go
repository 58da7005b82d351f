package gate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/obs"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// core hands out one token and counts what reached it.
type core struct{ calls int }

func (c *core) tok(req vend.Request) (vend.Token, error) {
	c.calls++
	return vend.Token{Provider: req.Provider, AccessToken: "the-token", ExpiresAt: time.Now().Add(time.Hour)}, nil
}
func (c *core) Token(_ context.Context, r vend.Request) (vend.Token, error)   { return c.tok(r) }
func (c *core) Refresh(_ context.Context, r vend.Request) (vend.Token, error) { return c.tok(r) }
func (c *core) Rejected(_ context.Context, r vend.Request, _ string) (vend.Token, error) {
	return c.tok(r)
}
func (c *core) Revoke(context.Context, vend.Request) (vend.RevokeResult, error) {
	c.calls++
	return vend.RevokeResult{}, nil
}
func (c *core) Keys(context.Context, []string, string, int) (map[string][]vend.KeyInfo, string, error) {
	return nil, "", nil
}
func (c *core) RefreshDue(context.Context, vend.RefreshOptions) (vend.RefreshResult, error) {
	c.calls++
	return vend.RefreshResult{}, nil
}

func setup(t *testing.T) (*gate.Gate, *core, *bytes.Buffer) {
	d := &provider.Definition{Name: "ledger", TokenURL: "https://auth.example.com/t", ClientID: "c", ClientSecret: "s",
		AllowedCallers: []string{"arn:aws:iam::111111111111:role/app"}, AdminCallers: []string{"arn:aws:iam::111111111111:role/ops"}}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	c := &core{}
	return gate.New(c, registry.NewStatic(map[string]*provider.Definition{"ledger": d}), obs.NewLogger(&logs, "info"), nil), c, &logs
}

func audits(logs *bytes.Buffer) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "audit" {
			out = append(out, m)
		}
	}
	return out
}

// TestRefreshWithheldFromOperator: the operator renews, the token stays.
func TestRefreshWithheldFromOperator(t *testing.T) {
	g, c, logs := setup(t)
	ops := identity.NewContext(context.Background(), identity.FromIAM(identity.PathAPI, "arn:aws:sts::111111111111:assumed-role/ops/s", "111111111111", ""))
	tok, err := g.Refresh(ops, vend.Request{Provider: "ledger"})
	if err != nil || tok.AccessToken != "" || !gate.Withheld(tok) || c.calls != 1 {
		t.Fatalf("operator refresh: %+v %v (core calls %d)", tok, err, c.calls)
	}
	if _, err := g.Token(ops, vend.Request{Provider: "ledger"}); err == nil || c.calls != 1 {
		t.Fatal("the operator was vended the token")
	}
	a := audits(logs)
	if len(a) != 2 || a[0]["outcome"] != "granted" || !strings.Contains(a[0]["detail"].(string), "withheld") || a[0]["token_sha256_prefix"] == nil {
		t.Fatalf("audit %v", a)
	}
	app := identity.NewContext(context.Background(), identity.FromIAM(identity.PathAPI, "arn:aws:sts::111111111111:assumed-role/app/s", "111111111111", ""))
	if tok, err := g.Refresh(app, vend.Request{Provider: "ledger"}); err == nil || tok.AccessToken != "" {
		t.Fatalf("a consumer who is no operator forced a refresh: %+v %v", tok, err)
	}
}

// TestManualRefresherRunAudited: a manual run (path refresher) is audited,
// a scheduled one (no caller) passes through unrecorded.
func TestManualRefresherRunAudited(t *testing.T) {
	g, c, logs := setup(t)
	if _, err := g.RefreshDue(context.Background(), vend.RefreshOptions{Exclusive: true}); err != nil || len(audits(logs)) != 0 {
		t.Fatalf("scheduled run: %v, %d audit records", err, len(audits(logs)))
	}
	ctx := identity.NewContext(context.Background(), identity.Caller{Path: authz.PathRefresher, Problem: identity.NoIdentity})
	if _, err := g.RefreshDue(ctx, vend.RefreshOptions{Providers: []string{"ledger"}, Force: true}); err != nil || c.calls != 2 {
		t.Fatal(err)
	}
	a := audits(logs)
	if len(a) != 1 || a[0]["path"] != "refresher" || a[0]["provider"] != "ledger" || a[0]["operation"] != "refresh" {
		t.Fatalf("audit %v", a)
	}
	api := identity.NewContext(context.Background(), identity.FromIAM(identity.PathAPI, "arn:aws:sts::111111111111:assumed-role/app/s", "111111111111", ""))
	if _, err := g.RefreshDue(api, vend.RefreshOptions{Providers: []string{"ledger"}, Force: true}); err == nil || c.calls != 2 {
		t.Fatalf("a consumer ran the refresher: %v", err)
	}
}
