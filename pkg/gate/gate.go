// Package gate is the vendor's request pipeline for tokens (docs/design.md
// §11), shared by every edge (HTTP API, function URL, direct invoke, local
// mode): the caller the edge resolved is taken from the context, the
// provider's definition is read, authz decides, and only then does the
// vending core run. Each request leaves exactly one audit record, granted
// or refused, and a refusal reaches neither the store nor the provider.
package gate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"slices"
	"strings"

	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// Core is the vending core (vend.Vendor).
type Core interface {
	Token(ctx context.Context, req vend.Request) (vend.Token, error)
	Refresh(ctx context.Context, req vend.Request) (vend.Token, error)
	Rejected(ctx context.Context, req vend.Request, sha256hex string) (vend.Token, error)
	Revoke(ctx context.Context, req vend.Request) (vend.RevokeResult, error)
	Keys(ctx context.Context, providers []string, after string, limit int) (map[string][]vend.KeyInfo, string, error)
	RefreshDue(ctx context.Context, o vend.RefreshOptions) (vend.RefreshResult, error)
}

// Definitions reads provider definitions (the registry, cached).
type Definitions interface {
	Get(ctx context.Context, name string) (*provider.Definition, error)
}

// Counter counts refusals for the CallerRefusals metric.
type Counter interface {
	Event(provider, name string)
}

// Gate guards a Core. It implements the Vendor interfaces of httpapi and
// lambdafn, so the edges cannot reach the core around it.
type Gate struct {
	core   Core
	defs   Definitions
	audit  *slog.Logger
	count  Counter
	policy authz.Policy
	prover Prover // signs consumers' DPoP proofs (dpop.go); nil: none
}

// WithPolicy sets who may use providers that name no allowed_callers
// (docs/design.md §11). Without it, verified callers of the vendor's own
// account (read from the invoked function's ARN) are admitted.
func (g *Gate) WithPolicy(p authz.Policy) *Gate {
	g.policy = p
	return g
}

// policyFor adds the vendor's own account, when the request runs in Lambda,
// to the accounts the policy admits.
func (g *Gate) policyFor(ctx context.Context) authz.Policy {
	p := g.policy
	if lc, ok := lambdacontext.FromContext(ctx); ok {
		// arn:aws:lambda:REGION:ACCOUNT:function:NAME
		if parts := strings.Split(lc.InvokedFunctionArn, ":"); len(parts) > 4 && parts[4] != "" && !slices.Contains(p.Accounts, parts[4]) {
			p.Accounts = append(slices.Clip(p.Accounts), parts[4])
		}
	}
	return p
}

// decide is the gate's decision for the caller in ctx.
func (g *Gate) decide(ctx context.Context, def *provider.Definition, op authz.Op) (authz.Admission, error) {
	return g.policyFor(ctx).Decide(identity.FromContext(ctx), def, op)
}

// New guards core. audit receives one record per request (the vendor's JSON
// logger: CloudWatch Logs in Lambda); count may be nil.
func New(core Core, defs Definitions, audit *slog.Logger, count Counter) *Gate {
	if audit == nil {
		audit = slog.New(slog.DiscardHandler)
	}
	return &Gate{core: core, defs: defs, audit: audit, count: count}
}

// Record is one audit entry. It never holds a token, a proof or a secret:
// the token is represented by a 12-hex-digit prefix of its SHA-256, enough
// to match a token seen at the provider, useless to present.
type Record struct {
	Path      identity.Path
	Caller    identity.Caller
	Op        authz.Op
	Provider  string
	Scope     string
	Resource  string
	Audience  string
	Outcome   string // "granted", a refusal reason, or the error code
	Detail    string // why, for refusals; what the decision relied on, for grants
	Source    vend.Source
	TokenHash string
	// Proof is set when a DPoP proof was issued with the token (the proof
	// itself is never recorded); Proofs counts them when a request asked
	// for several (dpop_count).
	Proof  bool
	Proofs int
}

// TokenHash is the audit record's token digest prefix.
func TokenHash(token string) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:6])
}

// Granted is the outcome of a request that was answered.
const Granted = "granted"

func (g *Gate) write(ctx context.Context, r Record) {
	// Room for every attribute, on the stack: a record costs slog's own
	// work and no growing of this slice.
	var room [16]slog.Attr
	attrs := append(room[:0],
		slog.String("path", string(r.Caller.Path)),
		slog.String("caller", r.Caller.Name()),
		slog.String("caller_account", r.Caller.Account),
		slog.String("operation", string(r.Op)),
		slog.String("provider", r.Provider),
		slog.String("scope", truncate(r.Scope, 256)),
		slog.String("outcome", r.Outcome),
	)
	if r.Resource != "" {
		attrs = append(attrs, slog.String("resource", truncate(r.Resource, 256)))
	}
	if r.Audience != "" {
		attrs = append(attrs, slog.String("audience", truncate(r.Audience, 256)))
	}
	if r.Caller.Problem != "" && r.Caller.Problem != identity.NoIdentity {
		// A bad proof is recorded even where the request was granted anyway.
		attrs = append(attrs, slog.String("identity_problem", r.Caller.Problem))
	}
	if r.Caller.OrgID != "" {
		attrs = append(attrs, slog.String("caller_org", r.Caller.OrgID))
	}
	if r.Detail != "" {
		attrs = append(attrs, slog.String("detail", truncate(r.Detail, 512)))
	}
	if r.Source != "" {
		attrs = append(attrs, slog.String("cache", string(r.Source)))
	}
	if r.TokenHash != "" {
		attrs = append(attrs, slog.String("token_sha256_prefix", r.TokenHash))
	}
	if r.Proof {
		attrs = append(attrs, slog.String("dpop_proof", "issued"))
	}
	if r.Proofs > 1 {
		attrs = append(attrs, slog.Int("dpop_proofs", r.Proofs))
	}
	g.audit.LogAttrs(ctx, slog.LevelInfo, "audit", attrs...)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// admit reads the definition and decides. On refusal it writes the request's
// audit record and returns the error; on success the caller writes it.
func (g *Gate) admit(ctx context.Context, op authz.Op, req vend.Request) (*provider.Definition, authz.Admission, error) {
	adm := authz.Admission{Caller: identity.FromContext(ctx)}
	def, err := g.defs.Get(ctx, req.Provider)
	if err == nil {
		adm, err = g.decide(ctx, def, op)
	}
	if err != nil {
		g.finish(ctx, adm, op, req, vend.Token{}, err)
	}
	return def, adm, err
}

// finish writes the audit record of a request that was admitted (or not).
func (g *Gate) finish(ctx context.Context, adm authz.Admission, op authz.Op, req vend.Request, t vend.Token, err error) {
	g.write(ctx, g.record(adm, op, req, t, err))
}

// record is the audit record of a request that was admitted (or not).
func (g *Gate) record(adm authz.Admission, op authz.Op, req vend.Request, t vend.Token, err error) Record {
	r := Record{Caller: adm.Caller, Op: op, Provider: req.Provider, Scope: req.Scope, Resource: req.Resource, Audience: req.Audience, Outcome: Granted, Detail: adm.Note}
	if err != nil {
		p := wire.Classify(err, req.Provider)
		r.Outcome = p.Code
		if p.Reason != "" {
			r.Outcome, r.Detail = p.Reason, p.Body.ErrorDescription
			if g.count != nil {
				g.count.Event(req.Provider, "caller_refused")
			}
		}
	} else {
		r.Scope, r.Source, r.TokenHash = t.Scope, t.Source, TokenHash(t.AccessToken)
	}
	return r
}

func (g *Gate) vend(ctx context.Context, op authz.Op, req vend.Request, do func() (vend.Token, error)) (vend.Token, error) {
	_, adm, err := g.admit(ctx, op, req)
	if err != nil {
		return vend.Token{}, err
	}
	t, err := do()
	g.finish(ctx, adm, op, req, t, err)
	return t, err
}

// Token vends, if the caller may have the provider's tokens.
func (g *Gate) Token(ctx context.Context, req vend.Request) (vend.Token, error) {
	return g.vend(ctx, authz.OpVend, req, func() (vend.Token, error) { return g.core.Token(ctx, req) })
}

// Refresh forces a refresh: an operator operation (admin_callers). An
// operator who may not vend the provider's tokens gets the renewal without
// the token: AccessToken is empty (Withheld), and the edges answer without
// one (HTTP 202).
func (g *Gate) Refresh(ctx context.Context, req vend.Request) (vend.Token, error) {
	def, adm, err := g.admit(ctx, authz.OpRefresh, req)
	if err != nil {
		return vend.Token{}, err
	}
	_, verr := g.decide(ctx, def, authz.OpVend)
	t, err := g.core.Refresh(ctx, req)
	if err == nil && verr != nil {
		adm.Note = strings.TrimPrefix(adm.Note+"; ", "; ") + "token withheld: the operator may not vend it"
		g.finish(ctx, adm, authz.OpRefresh, req, t, nil)
		t.AccessToken = ""
		return t, nil
	}
	g.finish(ctx, adm, authz.OpRefresh, req, t, err)
	return t, err
}

// Withheld reports whether t is a renewal answered without its token (a
// forced refresh by an operator who may not vend).
func Withheld(t vend.Token) bool { return t.AccessToken == "" }

// Rejected replaces a rejected token, for callers who may vend.
func (g *Gate) Rejected(ctx context.Context, req vend.Request, sha256hex string) (vend.Token, error) {
	return g.vend(ctx, authz.OpRejected, req, func() (vend.Token, error) { return g.core.Rejected(ctx, req, sha256hex) })
}

// Revoke is an operator operation (admin_callers).
func (g *Gate) Revoke(ctx context.Context, req vend.Request) (vend.RevokeResult, error) {
	_, adm, err := g.admit(ctx, authz.OpRevoke, req)
	if err != nil {
		return vend.RevokeResult{}, err
	}
	res, err := g.core.Revoke(ctx, req)
	g.finish(ctx, adm, authz.OpRevoke, req, vend.Token{}, err)
	return res, err
}

// Keys lists cached keys (no token); the listing shows only the providers
// the caller may vend (Listable), and writes one audit record.
func (g *Gate) Keys(ctx context.Context, providers []string, after string, limit int) (map[string][]vend.KeyInfo, string, error) {
	keys, next, err := g.core.Keys(ctx, providers, after, limit)
	g.finish(ctx, authz.Admission{Caller: identity.FromContext(ctx)}, authz.OpList, vend.Request{}, vend.Token{}, err)
	return keys, next, err
}

// Listable reports whether the caller may see def in a listing: whether it
// may vend its tokens.
func (g *Gate) Listable(ctx context.Context, def *provider.Definition) bool {
	_, err := g.decide(ctx, def, authz.OpVend)
	return err == nil
}

// RefreshDue runs the refresher. A scheduled run or a shard's run (no
// caller in ctx) is the vendor's own and passes through; a manual run
// (the refresher's {"force":true} event, path refresher) is an operator
// request: decided for each provider it names and audited once, like any
// request through the gate.
func (g *Gate) RefreshDue(ctx context.Context, o vend.RefreshOptions) (vend.RefreshResult, error) {
	c := identity.FromContext(ctx)
	if c.Path == identity.PathLocal {
		return g.core.RefreshDue(ctx, o)
	}
	req := vend.Request{Provider: strings.Join(o.Providers, " ")}
	if req.Provider == "" {
		req.Provider = "*"
	}
	adm := authz.Admission{Caller: c}
	// The refresher's own path is admitted for every provider: no
	// definition to read (a provider whose secret is gone may still have
	// keys to renew or fail on).
	for _, name := range o.Providers {
		if authz.Operator(c.Path) {
			break
		}
		def, err := g.defs.Get(ctx, name)
		if err == nil {
			adm, err = g.decide(ctx, def, authz.OpRefresh)
		}
		if err != nil {
			g.finish(ctx, adm, authz.OpRefresh, req, vend.Token{}, err)
			return vend.RefreshResult{}, err
		}
	}
	if len(o.Providers) == 0 && !authz.Operator(c.Path) {
		err := &authz.NotAllowedError{Provider: "*", Reason: authz.NoOperators, Detail: "a refresher run over every provider is for the refresher's own event"}
		g.finish(ctx, adm, authz.OpRefresh, req, vend.Token{}, err)
		return vend.RefreshResult{}, err
	}
	res, err := g.core.RefreshDue(ctx, o)
	if err == nil && o.Force {
		adm.Note = strings.TrimPrefix(adm.Note+"; ", "; ") + "forced run"
	}
	g.finish(ctx, adm, authz.OpRefresh, req, vend.Token{}, err)
	return res, err
}
