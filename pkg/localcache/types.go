package localcache

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Token is the vendor's token JSON (the HTTP API's and the vend
// function's answer).
type Token struct {
	Provider    string `json:"provider"`
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	ExpiresAt   string `json:"expires_at"`
	IssuedAt    string `json:"issued_at,omitempty"`
	Scope       string `json:"scope"`
	// DPoPProof is the proof the vendor signed for the request named by
	// Request.DPoPMethod and DPoPURL (token_type DPoP): good for that one
	// request, never cached.
	DPoPProof string `json:"dpop_proof,omitempty"`
	// DPoPProofs are Request.DPoPCount proofs for that request (the vend
	// function's dpop_count), each good for one request.
	DPoPProofs []string `json:"dpop_proofs,omitempty"`
}

// Lifetime is the token's whole life, from issued_at (vendors before it
// was sent: expires_in, which is only the time left). exp is expires_at.
func (t *Token) Lifetime(exp time.Time) time.Duration {
	if issued, err := time.Parse(time.RFC3339, t.IssuedAt); err == nil && exp.After(issued) {
		return exp.Sub(issued)
	}
	return time.Duration(t.ExpiresIn) * time.Second
}

// Request names a token. RejectedSHA256, when set, reports that token as
// refused by a resource server.
type Request struct {
	Provider, Scope string
	// Resource and Audience (space-separated) name the token's target:
	// RFC 8707 resource indicators, audiences.
	Resource, Audience string
	RejectedSHA256     string
	// MinTTL asks for a token with at least this long left, capped at half
	// the token's lifetime as the vendor caps it. A Fetcher sends it to the
	// vendor when above zero (0: the vendor's default, 60 s).
	MinTTL time.Duration
	// DPoPMethod and DPoPURL ask for a DPoP proof for that request, and
	// DPoPNonce is the resource server's DPoP-Nonce if it demanded one.
	DPoPMethod, DPoPURL, DPoPNonce string
	// DPoPCount, above 1, asks the vend function for that many proofs at
	// once (direct invoke only; the HTTP API signs one per request).
	DPoPCount int
}

// Fetcher asks the vendor for a token: pkg/client's HTTPFetcher or
// LambdaInvoker.
type Fetcher interface {
	Fetch(ctx context.Context, req Request) (*Token, error)
}

// Error is a refusal from the vendor.
type Error struct {
	Status     int    // HTTP status, 0 for direct invoke
	Code       string // error, or the Lambda errorType
	Message    string
	RetryAfter time.Duration
}

func (e *Error) Error() string { return fmt.Sprintf("token vendor: %s: %s", e.Code, e.Message) }

// permanent are the vendor's refusals that asking again will not change,
// as the vend function's errorType and as the HTTP API's error code: a
// renewal refused so drops the key (asked for again, it is fetched again).
var permanent = map[string]bool{
	"UnknownProvider": true, "ScopeNotAllowed": true, "CallerNotAllowed": true, "KeyLimitReached": true, "InvalidRequest": true, "InvalidTarget": true,
	"unknown_provider": true, "scope_not_allowed": true, "caller_not_allowed": true, "key_limit_reached": true, "invalid_request": true, "invalid_target": true,
}

// normalizeScope splits a scope string as the vendor does
// (provider.NormalizeScope): on the space only, so a tab or a Unicode
// space stays inside a token, which the vendor refuses, instead of
// spelling a well-formed set; duplicates dropped, sorted.
func normalizeScope(s string) string {
	parts := slices.DeleteFunc(strings.Split(s, " "), func(p string) bool { return p == "" })
	slices.Sort(parts)
	return strings.Join(slices.Compact(parts), " ")
}

// normalizeTarget splits resources or audiences as the vendor does
// (provider.ResolveTarget: strings.Fields), deduplicated and sorted.
func normalizeTarget(s string) string {
	parts := strings.Fields(s)
	slices.Sort(parts)
	return strings.Join(slices.Compact(parts), " ")
}

// normalized is r's provider, scope set and target as the vendor reads
// them; MinTTL and RejectedSHA256 are left out.
func normalized(r Request) Request {
	return Request{Provider: r.Provider, Scope: normalizeScope(r.Scope), Resource: normalizeTarget(r.Resource), Audience: normalizeTarget(r.Audience)}
}

// Key names a request's cached token: provider, and the normalized scope
// set and target. "read write" and "write read" are one key; MinTTL and
// RejectedSHA256 are not part of it. Each field is quoted, so no byte in
// one (a NUL) can spell another.
func Key(r Request) string {
	n := normalized(r)
	return strconv.Quote(n.Provider) + strconv.Quote(n.Scope) + strconv.Quote(n.Resource) + strconv.Quote(n.Audience)
}
