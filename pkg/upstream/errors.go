package upstream

import (
	"errors"
	"fmt"
	"time"
)

// Kind says what a caller may do about a failed request.
type Kind int

const (
	// Transient failures (network, timeout, 5xx, malformed success) may succeed on retry.
	Transient Kind = iota
	// RateLimited is a 429: back off for RetryAfter before asking again.
	RateLimited
	// Permanent failures (invalid_client, invalid_scope, …) will fail again until
	// the registration changes; they are never retried.
	Permanent
)

func (k Kind) String() string {
	switch k {
	case Transient:
		return "transient"
	case RateLimited:
		return "rate_limited"
	case Permanent:
		return "permanent"
	}
	return "unknown"
}

// RetrieveError is a failed token or revocation request. Like
// golang.org/x/oauth2's RetrieveError it carries the provider's error code, and
// it adds what a cache needs: the kind of failure and the provider's
// Retry-After. It never holds a secret, a token, a request URL or a body:
// Description is the provider's error_description with the client secret
// redacted, cut to 200 bytes of printable text.
type RetrieveError struct {
	Provider    string
	Kind        Kind
	StatusCode  int    // 0 when no response was received
	Code        string // RFC 6749 §5.2 error code, or a synthetic one such as "http_505"
	Description string
	RetryAfter  time.Duration
	Attempts    int
	Err         error // underlying cause with no URL in it (network error, context error)
}

func (e *RetrieveError) Error() string {
	msg := fmt.Sprintf("provider %s: %s failure", e.Provider, e.Kind)
	if e.StatusCode != 0 {
		msg += fmt.Sprintf(": status %d", e.StatusCode)
	}
	if e.Code != "" {
		msg += ": " + e.Code
	}
	if e.Description != "" {
		msg += ": " + e.Description
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	if e.Attempts > 1 {
		msg += fmt.Sprintf(" (after %d attempts)", e.Attempts)
	}
	return msg
}

func (e *RetrieveError) Unwrap() error { return e.Err }

// IsClientAuth reports whether the provider refused the client's credentials:
// the signal to re-read a rotated secret once before giving up.
func (e *RetrieveError) IsClientAuth() bool {
	return e.Code == "invalid_client" || e.Code == "unauthorized_client"
}

// AsRetrieveError unwraps err to a *RetrieveError.
func AsRetrieveError(err error) (*RetrieveError, bool) {
	var re *RetrieveError
	ok := errors.As(err, &re)
	return re, ok
}
