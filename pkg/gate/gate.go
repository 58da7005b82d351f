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
	prover Prover // signs consumers' DPoP proofs (dpop.go); nil: none
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
	Detail    string // why, for refusals
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
	attrs := []slog.Attr{
		slog.String("path", string(r.Caller.Path)),
		slog.String("caller", r.Caller.Name()),
		slog.String("caller_account", r.Caller.Account),
		slog.String("operation", string(r.Op)),
		slog.String("provider", r.Provider),
		slog.String("scope", truncate(r.Scope, 256)),
		slog.String("outcome", r.Outcome),
	}
	if r.Resource != "" {
		attrs = append(attrs, slog.String("resource", truncate(r.Resource, 256)))
	}
	if r.Audience != "" {
		attrs = append(attrs, slog.String("audience", truncate(r.Audience, 256)))
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
func (g *Gate) admit(ctx context.Context, op authz.Op, req vend.Request) (identity.Caller, error) {
	c := identity.FromContext(ctx)
	def, err := g.defs.Get(ctx, req.Provider)
	if err == nil {
		err = authz.Decide(c, def, op)
	}
	if err != nil {
		g.finish(ctx, c, op, req, vend.Token{}, err)
	}
	return c, err
}

// finish writes the audit record of a request that was admitted (or not).
func (g *Gate) finish(ctx context.Context, c identity.Caller, op authz.Op, req vend.Request, t vend.Token, err error) {
	g.write(ctx, g.record(c, op, req, t, err))
}

// record is the audit record of a request that was admitted (or not).
func (g *Gate) record(c identity.Caller, op authz.Op, req vend.Request, t vend.Token, err error) Record {
	r := Record{Caller: c, Op: op, Provider: req.Provider, Scope: req.Scope, Resource: req.Resource, Audience: req.Audience, Outcome: Granted}
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
	c, err := g.admit(ctx, op, req)
	if err != nil {
		return vend.Token{}, err
	}
	t, err := do()
	g.finish(ctx, c, op, req, t, err)
	return t, err
}

// Token vends, if the caller may have the provider's tokens.
func (g *Gate) Token(ctx context.Context, req vend.Request) (vend.Token, error) {
	return g.vend(ctx, authz.OpVend, req, func() (vend.Token, error) { return g.core.Token(ctx, req) })
}

// Refresh forces a refresh: an operator operation (admin_callers).
func (g *Gate) Refresh(ctx context.Context, req vend.Request) (vend.Token, error) {
	return g.vend(ctx, authz.OpRefresh, req, func() (vend.Token, error) { return g.core.Refresh(ctx, req) })
}

// Rejected replaces a rejected token, for callers who may vend.
func (g *Gate) Rejected(ctx context.Context, req vend.Request, sha256hex string) (vend.Token, error) {
	return g.vend(ctx, authz.OpRejected, req, func() (vend.Token, error) { return g.core.Rejected(ctx, req, sha256hex) })
}

// Revoke is an operator operation (admin_callers).
func (g *Gate) Revoke(ctx context.Context, req vend.Request) (vend.RevokeResult, error) {
	c, err := g.admit(ctx, authz.OpRevoke, req)
	if err != nil {
		return vend.RevokeResult{}, err
	}
	res, err := g.core.Revoke(ctx, req)
	g.finish(ctx, c, authz.OpRevoke, req, vend.Token{}, err)
	return res, err
}

// Keys lists cached keys (no token); the listing shows only the providers
// the caller may vend (Listable), and writes one audit record.
func (g *Gate) Keys(ctx context.Context, providers []string, after string, limit int) (map[string][]vend.KeyInfo, string, error) {
	keys, next, err := g.core.Keys(ctx, providers, after, limit)
	g.finish(ctx, identity.FromContext(ctx), authz.OpList, vend.Request{}, vend.Token{}, err)
	return keys, next, err
}

// Listable reports whether the caller may see def in a listing: whether it
// may vend its tokens.
func (g *Gate) Listable(ctx context.Context, def *provider.Definition) bool {
	return authz.Decide(identity.FromContext(ctx), def, authz.OpVend) == nil
}
