// Package wire holds what crosses the edge: the token and error JSON of
// docs/design.md §5, and the one place errors become HTTP statuses, error codes
// and Lambda errorTypes. Clients never see internal error text.
package wire

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"time"

	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// TokenResponse is the token JSON.
type TokenResponse struct {
	Provider    string `json:"provider"`
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	ExpiresAt   string `json:"expires_at"`
	// IssuedAt is when the token's life began: with expires_at it gives
	// the lifetime a client needs to judge min_ttl (expires_in is only
	// what is left).
	IssuedAt string `json:"issued_at,omitempty"`
	Scope    string `json:"scope"`
	// DPoPProof is the DPoP proof (RFC 9449) the caller asked for with
	// dpop_htm and dpop_htu, for a DPoP-bound token (token_type DPoP).
	DPoPProof string `json:"dpop_proof,omitempty"`
	// DPoPProofs are the proofs a direct invoke asked for with dpop_count
	// (each for one request; dpop_proof is then left out).
	DPoPProofs []string `json:"dpop_proofs,omitempty"`
}

// NewTokenResponse renders t as of now; expires_in is whole seconds left.
func NewTokenResponse(t vend.Token, now time.Time) TokenResponse {
	issued := ""
	if life := t.Lifetime(); life > 0 {
		issued = t.ExpiresAt.Add(-life).UTC().Format(time.RFC3339)
	}
	return TokenResponse{
		IssuedAt:    issued,
		Provider:    t.Provider,
		AccessToken: t.AccessToken,
		TokenType:   t.TokenType,
		ExpiresIn:   int64(math.Floor(t.ExpiresAt.Sub(now).Seconds())),
		ExpiresAt:   t.ExpiresAt.UTC().Format(time.RFC3339),
		Scope:       t.Scope,
	}
}

// ErrorResponse is the error JSON.
type ErrorResponse struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	Provider         string `json:"provider,omitempty"`
	UpstreamError    string `json:"upstream_error,omitempty"`
}

// Problem is an error classified for the edge.
type Problem struct {
	Status     int
	Code       string // error
	Type       string // Lambda errorType
	Body       ErrorResponse
	RetryAfter time.Duration
	// Internal is true when the body hides the cause, which must be logged.
	Internal bool
	// Reason is a refusal's reason (authz), for the audit record.
	Reason string
}

// Params parses a request's query for the edges (HTTP API, extension):
// only the named parameters, each at most once; anything else is an
// invalid_request naming the parameter (shortened, as the caller wrote it).
func Params(r *http.Request, allowed ...string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, Invalid("malformed query string")
	}
	for k, vs := range q {
		if !slices.Contains(allowed, k) {
			if len(k) > 40 {
				k = k[:40] + "…"
			}
			return nil, Invalid("unknown parameter %q", k)
		}
		if len(vs) > 1 {
			return nil, Invalid("parameter %q given more than once", k)
		}
	}
	return q, nil
}

// Invalid builds an invalid_request error for input the edge rejects.
func Invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", vend.ErrInvalidRequest, fmt.Sprintf(format, args...))
}

// kinds is every error the edges report: Lambda errorType → HTTP status
// and error code.
var kinds = map[string]struct {
	Status int
	Code   string
}{
	"InvalidRequest":      {400, "invalid_request"},
	"ScopeNotAllowed":     {403, "scope_not_allowed"},
	"KeyLimitReached":     {403, "key_limit_reached"},
	"InvalidTarget":       {403, "invalid_target"},
	"CallerNotAllowed":    {403, "caller_not_allowed"},
	"IdentityUnavailable": {503, "identity_unavailable"},
	"UnknownProvider":     {404, "unknown_provider"},
	"UpstreamRejected":    {502, "upstream_rejected"},
	"UpstreamUnavailable": {503, "upstream_unavailable"},
	"InternalError":       {500, "internal_error"},
}

// ForErrorType is the HTTP status and error code of a Lambda errorType, for
// an edge that relays the vend function's errors (the extension); an
// unknown type is an internal error.
func ForErrorType(errorType string) (status int, code string) {
	k, ok := kinds[errorType]
	if !ok {
		k = kinds["InternalError"]
	}
	return k.Status, k.Code
}

// Classify maps err to its status, code and errorType.
func Classify(err error, providerName string) Problem {
	mk := func(typ, desc string) Problem {
		k := kinds[typ]
		return Problem{Status: k.Status, Code: k.Code, Type: typ, Body: ErrorResponse{Error: k.Code, ErrorDescription: desc, Provider: providerName}}
	}
	var re *upstream.RetrieveError
	var na *authz.NotAllowedError
	switch {
	case errors.As(err, &na) && na.Retryable:
		p := mk("IdentityUnavailable", "the caller's identity could not be verified right now ("+na.Reason+"): "+na.Detail)
		p.RetryAfter = 2 * time.Second
		p.Reason = na.Reason
		return p
	case errors.As(err, &na):
		p := mk("CallerNotAllowed", na.Reason+": "+na.Detail)
		p.Reason = na.Reason
		return p
	case errors.Is(err, vend.ErrInvalidRequest):
		return mk("InvalidRequest", err.Error())
	case errors.Is(err, provider.ErrScopeNotAllowed):
		return mk("ScopeNotAllowed", err.Error())
	case errors.Is(err, provider.ErrKeyLimit):
		return mk("KeyLimitReached", err.Error())
	case errors.Is(err, provider.ErrTargetNotAllowed):
		return mk("InvalidTarget", err.Error())
	case errors.Is(err, provider.ErrNotFound), errors.Is(err, provider.ErrInvalidName):
		return mk("UnknownProvider", fmt.Sprintf("no provider named %q", providerName))
	case errors.As(err, &re) && re.Kind == upstream.Permanent:
		desc := "the provider refused the token request"
		if re.Description != "" {
			desc += ": " + re.Description
		}
		p := mk("UpstreamRejected", desc)
		p.Body.UpstreamError = re.Code
		return p
	}
	if ue, ok := vend.IsUnavailable(err); ok {
		p := mk("UpstreamUnavailable", "no usable token right now: "+ue.Reason)
		p.RetryAfter = max(ue.RetryAfter, time.Second)
		return p
	}
	if errors.Is(err, provider.ErrSourceUnavailable) {
		p := mk("UpstreamUnavailable", "provider definitions cannot be read right now")
		p.RetryAfter = 5 * time.Second
		return p
	}
	p := mk("InternalError", "internal error; see the vendor's logs")
	p.Internal = true
	return p
}

// RetryAfterSeconds renders a Retry-After value (at least 1).
func (p Problem) RetryAfterSeconds() int64 {
	return max(1, int64(math.Ceil(p.RetryAfter.Seconds())))
}

// Lambda errors: their type names become the caller's errorType.
type (
	InvalidRequest      struct{ lambdaError }
	ScopeNotAllowed     struct{ lambdaError }
	KeyLimitReached     struct{ lambdaError }
	InvalidTarget       struct{ lambdaError }
	CallerNotAllowed    struct{ lambdaError }
	IdentityUnavailable struct{ lambdaError }
	UnknownProvider     struct{ lambdaError }
	UpstreamRejected    struct{ lambdaError }
	UpstreamUnavailable struct{ lambdaError }
	InternalError       struct{ lambdaError }
)

// ErrorType is the errorType the Lambda runtime reports for err: the name of
// its type, dereferenced (as aws-lambda-go does), or "" for nil.
func ErrorType(err error) string {
	if err == nil {
		return ""
	}
	t := reflect.TypeOf(err)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Name()
}

type lambdaError struct{ msg string }

func (e lambdaError) Error() string { return e.msg }

// LambdaError is the function error for p.
func (p Problem) LambdaError() error {
	msg := p.Body.ErrorDescription
	if p.Body.UpstreamError != "" {
		msg += " (upstream_error=" + p.Body.UpstreamError + ")"
	}
	if p.RetryAfter > 0 {
		msg += fmt.Sprintf(" (retry_after=%ds)", p.RetryAfterSeconds())
	}
	le := lambdaError{msg: msg}
	switch p.Type {
	case "InvalidRequest":
		return &InvalidRequest{le}
	case "ScopeNotAllowed":
		return &ScopeNotAllowed{le}
	case "KeyLimitReached":
		return &KeyLimitReached{le}
	case "InvalidTarget":
		return &InvalidTarget{le}
	case "UnknownProvider":
		return &UnknownProvider{le}
	case "CallerNotAllowed":
		return &CallerNotAllowed{le}
	case "IdentityUnavailable":
		return &IdentityUnavailable{le}
	case "UpstreamRejected":
		return &UpstreamRejected{le}
	case "UpstreamUnavailable":
		return &UpstreamUnavailable{le}
	default:
		return &InternalError{le}
	}
}
