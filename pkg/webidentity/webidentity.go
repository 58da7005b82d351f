// Package webidentity gets the vendor's own AWS-issued JWT (STS
// GetWebIdentityToken, IAM outbound identity federation) to use as a
// client assertion: the client authenticates with no secret and no key at
// all (docs/design.md §2, auth_method aws_web_identity). A token is kept in
// memory only while it is valid, and never stored, logged or returned.
package webidentity

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	"golang.org/x/sync/singleflight"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/upstream"
)

// STS is the part of the STS client this package uses.
type STS interface {
	GetWebIdentityToken(ctx context.Context, in *sts.GetWebIdentityTokenInput, optFns ...func(*sts.Options)) (*sts.GetWebIdentityTokenOutput, error)
}

// reuseMargin: a cached token is not handed out with less than this left,
// so it is still valid when the authorization server checks it.
const reuseMargin = 30 * time.Second

// Tokens hands out web identity tokens per (audience, algorithm, duration).
type Tokens struct {
	api STS
	now func() time.Time

	mu    sync.Mutex
	cache map[string]cached
	sf    singleflight.Group
}

type cached struct {
	jwt     string
	expires time.Time
}

// New returns Tokens over api (nil: the method is not configured).
func New(api STS) *Tokens {
	return &Tokens{api: api, now: time.Now, cache: map[string]cached{}}
}

// WithClock sets the clock (tests); it returns t.
func (t *Tokens) WithClock(now func() time.Time) *Tokens {
	t.now = now
	return t
}

// Token is a web identity token for def's audience, from memory while it
// has more than reuseMargin left, else from STS.
func (t *Tokens) Token(ctx context.Context, def *provider.Definition) (string, error) {
	if t == nil || t.api == nil {
		return "", &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Permanent, Code: "web_identity_unavailable",
			Description: "aws_web_identity is not configured in this vendor (no STS client)"}
	}
	aud, alg, dur := def.WebIdentity()
	k := fmt.Sprintf("%s\x00%s\x00%d", aud, alg, dur)
	t.mu.Lock()
	c, ok := t.cache[k]
	t.mu.Unlock()
	if ok && t.now().Add(reuseMargin).Before(c.expires) {
		return c.jwt, nil
	}
	v, err, _ := t.sf.Do(k, func() (any, error) {
		out, err := t.api.GetWebIdentityToken(ctx, &sts.GetWebIdentityTokenInput{
			Audience: []string{aud}, SigningAlgorithm: aws.String(alg), DurationSeconds: aws.Int32(int32(dur)),
		})
		if err != nil {
			return nil, classify(def, err)
		}
		if out.WebIdentityToken == nil || *out.WebIdentityToken == "" {
			return nil, &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Transient, Code: "web_identity_empty", Description: "STS answered without a token"}
		}
		exp := t.now().Add(time.Duration(dur) * time.Second)
		if out.Expiration != nil {
			exp = *out.Expiration
		}
		c := cached{jwt: *out.WebIdentityToken, expires: exp}
		t.mu.Lock()
		t.cache[k] = c
		t.mu.Unlock()
		return c.jwt, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// classify types STS's errors: federation not enabled (or not allowed) is a
// permanent configuration error, clearly worded; throttling and failures
// of the service are transient.
func classify(def *provider.Definition, err error) error {
	var ae smithy.APIError
	code := ""
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	switch code {
	case "OutboundWebIdentityFederationDisabledException", "OutboundWebIdentityFederationDisabled":
		return &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Permanent, Code: "web_identity_federation_disabled",
			Description: "IAM outbound identity federation is not enabled for this AWS account (aws iam enable-outbound-web-identity-federation)"}
	case "AccessDenied", "AccessDeniedException":
		return &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Permanent, Code: "web_identity_denied",
			Description: "the vendor's role may not call sts:GetWebIdentityToken for this audience (template parameter WebIdentityAudiences)"}
	case "ValidationError", "JWTPayloadSizeExceededException", "SessionDurationEscalationException":
		return &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Permanent, Code: "web_identity_invalid",
			Description: "STS refused the web identity token request (" + code + ")"}
	}
	return &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Transient, Code: "web_identity_unavailable",
		Description: "STS could not issue a web identity token right now"}
}
