// Package wire holds what crosses the edge: the token and error JSON of
// docs/design.md §5, and the one place errors become HTTP statuses, error codes
// and Lambda errorTypes. Clients never see internal error text.
package wire

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"time"

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
	Scope       string `json:"scope"`
}

// NewTokenResponse renders t as of now; expires_in is whole seconds left.
func NewTokenResponse(t vend.Token, now time.Time) TokenResponse {
	return TokenResponse{
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
}

// Invalid builds an invalid_request error for input the edge rejects.
func Invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", vend.ErrInvalidRequest, fmt.Sprintf(format, args...))
}

// Classify maps err to its status, code and errorType.
func Classify(err error, providerName string) Problem {
	mk := func(status int, code, typ, desc string) Problem {
		return Problem{Status: status, Code: code, Type: typ, Body: ErrorResponse{Error: code, ErrorDescription: desc, Provider: providerName}}
	}
	var re *upstream.RetrieveError
	switch {
	case errors.Is(err, vend.ErrInvalidRequest):
		return mk(400, "invalid_request", "InvalidRequest", err.Error())
	case errors.Is(err, provider.ErrScopeNotAllowed):
		return mk(403, "scope_not_allowed", "ScopeNotAllowed", err.Error())
	case errors.Is(err, provider.ErrKeyLimit):
		return mk(403, "key_limit_reached", "KeyLimitReached", err.Error())
	case errors.Is(err, provider.ErrNotFound), errors.Is(err, provider.ErrInvalidName):
		return mk(404, "unknown_provider", "UnknownProvider", fmt.Sprintf("no provider named %q", providerName))
	case errors.As(err, &re) && re.Kind == upstream.Permanent:
		desc := "the provider refused the token request"
		if re.Description != "" {
			desc += ": " + re.Description
		}
		p := mk(502, "upstream_rejected", "UpstreamRejected", desc)
		p.Body.UpstreamError = re.Code
		return p
	}
	if ue, ok := vend.IsUnavailable(err); ok {
		p := mk(503, "upstream_unavailable", "UpstreamUnavailable", "no usable token right now: "+ue.Reason)
		p.RetryAfter = max(ue.RetryAfter, time.Second)
		return p
	}
	if errors.Is(err, provider.ErrSourceUnavailable) {
		p := mk(503, "upstream_unavailable", "UpstreamUnavailable", "provider definitions cannot be read right now")
		p.RetryAfter = 5 * time.Second
		return p
	}
	p := mk(500, "internal_error", "InternalError", "internal error; see the vendor's logs")
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
	case "UnknownProvider":
		return &UnknownProvider{le}
	case "UpstreamRejected":
		return &UpstreamRejected{le}
	case "UpstreamUnavailable":
		return &UpstreamUnavailable{le}
	default:
		return &InternalError{le}
	}
}
