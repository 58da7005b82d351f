// Package httpapi is the vendor's HTTP API (docs/design.md §5), one net/http
// handler served by API Gateway (through lambdafn) and by local mode alike.
package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// Vendor is the vending core as the API uses it.
type Vendor interface {
	Token(ctx context.Context, req vend.Request) (vend.Token, error)
	Refresh(ctx context.Context, req vend.Request) (vend.Token, error)
	Rejected(ctx context.Context, req vend.Request, sha256hex string) (vend.Token, error)
	Revoke(ctx context.Context, req vend.Request) (vend.RevokeResult, error)
	Keys(ctx context.Context, providers []string, after string, limit int) (map[string][]vend.KeyInfo, string, error)
}

// lister is what a guarded vendor (gate.Gate) adds: whether the caller may
// see a provider in the listing.
type lister interface {
	Listable(ctx context.Context, def *provider.Definition) bool
}

// Providers lists and reads definitions.
type Providers interface {
	Names(ctx context.Context) ([]string, error)
	Get(ctx context.Context, name string) (*provider.Definition, error)
}

// PublicKeys renders a provider's public JWK Set (assertion.Keys).
type PublicKeys interface {
	JWKS(ctx context.Context, def *provider.Definition) ([]byte, error)
}

// jwksMaxAge is how long an authorization server may cache a JWK Set: a
// rotation publishes the new key at least this long before it signs.
const jwksMaxAge = 300

// maxBody bounds request bodies; the only body is {"token_sha256": "..."}.
const maxBody = 4 << 10

// Handler serves the API.
type Handler struct {
	v     Vendor
	provs Providers
	log   *slog.Logger
	now   func() time.Time
	mux   *http.ServeMux
	// cursors seals the listing's cursors: opaque to the caller, bound to
	// it, and refused when altered.
	cursors *cursorBox
}

// New builds the handler. now may be nil (time.Now).
func New(v Vendor, provs Providers, log *slog.Logger, now func() time.Time) *Handler {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{v: v, provs: provs, log: log, now: now, mux: http.NewServeMux(), cursors: newCursorBox(nil)}
	h.mux.HandleFunc("GET /v1/tokens/{provider}", h.token)
	h.mux.HandleFunc("POST /v1/tokens/{provider}/refresh", h.refresh)
	h.mux.HandleFunc("POST /v1/tokens/{provider}/revoke", h.revoke)
	h.mux.HandleFunc("POST /v1/tokens/{provider}/rejected", h.rejected)
	h.mux.HandleFunc("GET /v1/providers", h.providers)
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	return h
}

// WithCursorKey makes listing cursors sealed with the key key returns (at
// least 32 bytes, shared by every instance of the stack, read once), so a
// cursor one instance returned opens on another. Without it, each process
// seals with a random key of its own (local mode: one process).
func (h *Handler) WithCursorKey(key func(context.Context) ([]byte, error)) *Handler {
	h.cursors = newCursorBox(key)
	return h
}

// WithJWKS adds GET /v1/providers/{provider}/jwks.json: the public half of a
// private_key_jwt provider's signing key, for an authorization server to
// fetch as the client's jwks_uri (so keys rotate without re-registration).
// The route needs no IAM: it serves only public keys, and nothing for other
// providers.
func (h *Handler) WithJWKS(keys PublicKeys) *Handler {
	h.mux.HandleFunc("GET /v1/providers/{provider}/jwks.json", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("provider")
		_, err := wire.Params(r)
		if err == nil {
			err = checkPath(r, name)
		}
		var def *provider.Definition
		if err == nil {
			def, err = h.provs.Get(r.Context(), name)
		}
		var broken *provider.FieldError
		if errors.As(err, &broken) {
			// A secret whose definition does not load serves no keys: the
			// operator hears of it in the log, a prober does not.
			h.log.WarnContext(r.Context(), "JWKS: provider definition does not load", "provider", name, "error", err)
		}
		if errors.Is(err, provider.ErrNotFound) || broken != nil || (err == nil && def.AuthMethod != provider.AuthPrivateKeyJWT) {
			// One answer for every name it serves no keys for, unknown or
			// not: the route needs no IAM, and must not tell which
			// providers exist.
			h.writeError(w, r, http.StatusNotFound, wire.ErrorResponse{Error: "not_found", ErrorDescription: "no JWK Set is published under this name"})
			return
		}
		if err != nil {
			h.fail(w, r, name, err)
			return
		}
		set, err := keys.JWKS(r.Context(), def)
		if err != nil {
			h.fail(w, r, name, err)
			return
		}
		w.Header().Set("Cache-Control", fmt.Sprintf("public, max-age=%d", jwksMaxAge))
		w.Header().Del("Pragma")
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.WriteHeader(http.StatusOK)
		w.Write(set)
	})
	return h
}

// ServeHTTP logs one line per request: never a token, never a header.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	// Token responses and errors alike are never cached (RFC 6749 §5.1).
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	if _, pattern := h.mux.Handler(r); pattern == "" {
		h.routeError(rec, r)
	} else {
		h.mux.ServeHTTP(rec, r)
	}
	attrs := []any{"method", r.Method, "path", r.URL.Path, "status", rec.status, "latency_ms", time.Since(start).Milliseconds()}
	if rec.source != "" {
		attrs = append(attrs, "cache", rec.source)
	}
	if rec.errCode != "" {
		attrs = append(attrs, "error", rec.errCode)
	}
	h.log.InfoContext(r.Context(), "request", attrs...)
}

// routeError answers requests no route takes: 405 where the path exists
// with another method, else 404.
func (h *Handler) routeError(w *statusRecorder, r *http.Request) {
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := h.mux.Handler(probe); p != "" {
			w.Header().Set("Allow", m)
			h.writeError(w, r, http.StatusMethodNotAllowed, wire.ErrorResponse{Error: "method_not_allowed", ErrorDescription: r.Method + " is not allowed here; use " + m})
			return
		}
	}
	h.writeError(w, r, http.StatusNotFound, wire.ErrorResponse{Error: "not_found", ErrorDescription: "no such route"})
}

type statusRecorder struct {
	http.ResponseWriter
	status  int
	source  vend.Source
	errCode string
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func vendRequest(r *http.Request, withMinTTL bool, extra ...string) (vend.Request, error) {
	allowed := []string{"scope", "resource", "audience"}
	if withMinTTL {
		allowed = append(allowed, "min_ttl")
	}
	q, err := wire.Params(r, append(allowed, extra...)...)
	if err != nil {
		return vend.Request{}, err
	}
	req := vend.Request{Provider: r.PathValue("provider"), Scope: q.Get("scope"), Resource: q.Get("resource"), Audience: q.Get("audience"), MinTTL: -1}
	if q.Has("min_ttl") {
		n, err := strconv.ParseInt(q.Get("min_ttl"), 10, 64)
		if err != nil || n < 0 || n > int64(vend.MaxMinTTL/time.Second) {
			return vend.Request{}, wire.Invalid("min_ttl must be a whole number of seconds from 0 to %d", int64(vend.MaxMinTTL/time.Second))
		}
		req.MinTTL = time.Duration(n) * time.Second
	}
	return req, checkPath(r, req.Provider)
}

// checkPath refuses a provider path segment that is percent-encoded or not
// a provider name, before anything is read for it.
func checkPath(r *http.Request, name string) error {
	if strings.Contains(r.URL.EscapedPath(), "%") {
		// IAM authorized the route as the caller wrote it; a decoded name
		// would be another resource than the one the policy named.
		return wire.Invalid("the path must not be percent-encoded: provider names never need it")
	}
	if !provider.ValidName(name) {
		return provider.ErrInvalidName
	}
	return nil
}

func (h *Handler) token(w http.ResponseWriter, r *http.Request) {
	if wantsProof(r) {
		h.tokenProof(w, r)
		return
	}
	h.vend(w, r, true, func(ctx context.Context, req vend.Request) (vend.Token, error) { return h.v.Token(ctx, req) })
}

func (h *Handler) refresh(w http.ResponseWriter, r *http.Request) {
	h.vend(w, r, true, func(ctx context.Context, req vend.Request) (vend.Token, error) { return h.v.Refresh(ctx, req) })
}

// renewed is the answer to a forced refresh by an operator who may not
// vend the provider's tokens (202): the key was renewed, and its token is
// not handed out.
type renewed struct {
	Provider  string `json:"provider"`
	Scope     string `json:"scope"`
	ExpiresAt string `json:"expires_at"`
	Renewed   bool   `json:"renewed"`
}

func (h *Handler) rejected(w http.ResponseWriter, r *http.Request) {
	h.vend(w, r, true, func(ctx context.Context, req vend.Request) (vend.Token, error) {
		var body struct {
			TokenSHA256 *string `json:"token_sha256"`
		}
		if err := decodeBody(r, &body); err != nil {
			return vend.Token{}, err
		}
		if body.TokenSHA256 == nil {
			return vend.Token{}, wire.Invalid("body must be {\"token_sha256\": \"<64 hex characters>\"}")
		}
		return h.v.Rejected(ctx, req, *body.TokenSHA256)
	})
}

func (h *Handler) vend(w http.ResponseWriter, r *http.Request, withMinTTL bool, do func(context.Context, vend.Request) (vend.Token, error)) {
	req, err := vendRequest(r, withMinTTL)
	if err == nil {
		var t vend.Token
		if t, err = do(r.Context(), req); err == nil {
			if rec, ok := w.(*statusRecorder); ok {
				rec.source = t.Source
			}
			if t.AccessToken == "" {
				// The gate withheld the token: the caller may renew the
				// key but not have it.
				writeJSON(w, http.StatusAccepted, renewed{Provider: t.Provider, Scope: t.Scope, ExpiresAt: t.ExpiresAt.UTC().Format(time.RFC3339), Renewed: true})
				return
			}
			writeJSON(w, http.StatusOK, wire.NewTokenResponse(t, h.now()))
			return
		}
	}
	h.fail(w, r, req.Provider, err)
}

func (h *Handler) revoke(w http.ResponseWriter, r *http.Request) {
	req, err := vendRequest(r, false)
	if err == nil {
		var res vend.RevokeResult
		if res, err = h.v.Revoke(r.Context(), req); err == nil {
			w.Header().Set("X-Upstream-Revoked", strconv.FormatBool(res.RevokedUpstream))
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	h.fail(w, r, req.Provider, err)
}

type providerJSON struct {
	Name       string         `json:"name"`
	TokenURL   string         `json:"token_url"`
	AuthMethod string         `json:"auth_method"`
	Tokens     []tokenSummary `json:"tokens"`
}

type tokenSummary struct {
	Scope     string  `json:"scope"`
	ExpiresAt *string `json:"expires_at"`
	RefreshAt *string `json:"refresh_at"`
	LastError *string `json:"last_error"`
}

// providers lists definitions and their cached keys: never a secret or a token.
func (h *Handler) providers(w http.ResponseWriter, r *http.Request) {
	q, err := wire.Params(r, "limit", "cursor")
	if err != nil {
		h.fail(w, r, "", err)
		return
	}
	limit := vend.MaxKeysPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > vend.MaxKeysPage {
			h.fail(w, r, "", wire.Invalid("limit: want a whole number from 1 to %d", vend.MaxKeysPage))
			return
		}
		limit = n
	}
	after := ""
	if c := q.Get("cursor"); c != "" {
		b, err := h.cursors.open(r.Context(), c)
		// A page ends on whatever record the scan looked at last.
		if err == nil && !vend.IsRecordKey(string(b)) {
			err = errBadCursor
		}
		if err != nil {
			h.fail(w, r, "", err)
			return
		}
		after = string(b)
	}
	keys, next, err := h.v.Keys(r.Context(), nil, after, limit)
	if err != nil {
		h.fail(w, r, "", err)
		return
	}
	names, err := h.provs.Names(r.Context())
	if after != "" {
		// Later pages list the providers whose keys they hold.
		names, err = nil, registry.ErrListingOff
	}
	if err != nil {
		// Listing secrets needs secretsmanager:ListSecrets on "*", which the
		// template does not grant (and turns off); list the providers the
		// cache knows instead.
		if !errors.Is(err, registry.ErrListingOff) && after == "" {
			h.log.WarnContext(r.Context(), "cannot list provider definitions; listing cached providers only", "error", err)
		}
		names = names[:0]
		for n := range keys {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	out := struct {
		Providers []providerJSON `json:"providers"`
		// NextCursor continues a listing that looked at limit records.
		NextCursor string `json:"next_cursor,omitempty"`
	}{Providers: []providerJSON{}}
	if next != "" {
		// The last record looked at may be any provider's (or a key-count
		// record): sealed, the cursor says nothing about it.
		if out.NextCursor, err = h.cursors.seal(r.Context(), []byte(next)); err != nil {
			h.fail(w, r, "", err)
			return
		}
	}
	for _, n := range names {
		d, err := h.provs.Get(r.Context(), n)
		if err != nil {
			h.log.WarnContext(r.Context(), "provider listed but unreadable", "provider", n, "error", err)
			continue
		}
		if l, ok := h.v.(lister); ok && !l.Listable(r.Context(), d) {
			continue // the listing shows only what the caller may vend
		}
		pj := providerJSON{Name: n, TokenURL: redactURL(d.TokenURL), AuthMethod: d.AuthMethod, Tokens: []tokenSummary{}}
		for _, k := range keys[n] {
			pj.Tokens = append(pj.Tokens, summarize(k))
		}
		out.Providers = append(out.Providers, pj)
	}
	writeJSON(w, http.StatusOK, out)
}

func summarize(k vend.KeyInfo) tokenSummary {
	ts := tokenSummary{Scope: k.Scope}
	if !k.ExpiresAt.IsZero() {
		e, rf := k.ExpiresAt.Format(time.RFC3339), k.RefreshAt.Format(time.RFC3339)
		ts.ExpiresAt, ts.RefreshAt = &e, &rf
	}
	if k.LastError != "" {
		le := k.LastError
		ts.LastError = &le
	}
	return ts
}

// redactURL drops the query string: some providers take credentials there.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.RawQuery, u.User = "", nil
	return u.String()
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, providerName string, err error) {
	p := wire.Classify(err, providerName)
	if p.Internal {
		h.log.ErrorContext(r.Context(), "request failed", "provider", providerName, "error", err)
	} else if p.Status >= 500 {
		h.log.WarnContext(r.Context(), "request failed", "provider", providerName, "error", err)
	}
	if p.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(p.RetryAfterSeconds(), 10))
	}
	h.writeError(w, r, p.Status, p.Body)
}

func (h *Handler) writeError(w http.ResponseWriter, _ *http.Request, status int, body wire.ErrorResponse) {
	if rec, ok := w.(*statusRecorder); ok {
		rec.errCode = body.Error
	}
	writeJSON(w, status, body)
}

func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return wire.Invalid("unreadable body")
	}
	if len(data) > maxBody {
		return wire.Invalid("body larger than %d bytes", maxBody)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return wire.Invalid("body is not the expected JSON object")
	}
	if dec.More() {
		return wire.Invalid("trailing data after the JSON body")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // a client that went away is not an error of ours
}
