package wire

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

func TestClassifyAndErrorType(t *testing.T) {
	cases := []struct {
		err    error
		status int
		typ    string
	}{
		{Invalid("bad scope"), 400, "InvalidRequest"},
		{fmt.Errorf("x: %w", provider.ErrScopeNotAllowed), 403, "ScopeNotAllowed"},
		{fmt.Errorf("x: %w", provider.ErrNotFound), 404, "UnknownProvider"},
		{&upstream.RetrieveError{Kind: upstream.Permanent, Code: "invalid_client"}, 502, "UpstreamRejected"},
		{&vend.UnavailableError{RetryAfter: 3 * time.Second}, 503, "UpstreamUnavailable"},
		{&upstream.RetrieveError{Kind: upstream.RateLimited, RetryAfter: 9 * time.Second}, 503, "UpstreamUnavailable"},
		{errors.New("dynamodb: boom with internals"), 500, "InternalError"},
		{&authz.NotAllowedError{Reason: authz.PrincipalNotListed, Detail: "x"}, 403, "CallerNotAllowed"},
		{fmt.Errorf("w: %w", &authz.NotAllowedError{Reason: "sts_unavailable", Retryable: true}), 503, "IdentityUnavailable"},
	}
	for _, c := range cases {
		p := Classify(c.err, "kopokopo")
		le := p.LambdaError()
		if p.Status != c.status || p.Type != c.typ || ErrorType(le) != c.typ {
			t.Errorf("%v: status %d type %s errorType %s", c.err, p.Status, p.Type, ErrorType(le))
		}
	}
	if p := Classify(errors.New("dynamodb: boom with internals"), "k"); !p.Internal || p.Body.ErrorDescription == "dynamodb: boom with internals" {
		t.Fatal("internal details reached the body")
	}
	if ErrorType(nil) != "" {
		t.Fatal("nil error has a type")
	}
}
