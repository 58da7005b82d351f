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

// fetchTimeout bounds one STS call, which runs on its own context: no
// caller's cancellation or deadline ends it for the others waiting.
const fetchTimeout = 10 * time.Second

// Tokens hands out web identity tokens, one per federated provider.
//
// The JWT is a bearer credential that every application trusting the
// vendor's role for its audience accepts (Entra's default audience is the
// same for every app), so one provider's JWT is never sent to another
// provider's endpoint: tokens are requested and cached per provider
// registration (name, client id, token_url) and its audience, algorithm
// and duration.
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

// cacheKey is the provider's registration and what it asks STS for.
func cacheKey(def *provider.Definition) string {
	aud, alg, dur := def.WebIdentity()
	return fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%s\x00%d", def.Name, def.ClientID, def.TokenURL, aud, alg, dur)
}

// Token is a web identity token for def, from memory while it has more
// than reuseMargin left, else from STS. The STS call is shared by def's
// concurrent callers and detached from each: a caller whose ctx ends
// returns its own ctx's error (never an STS failure, so it opens no
// cooldown) and the others go on waiting.
func (t *Tokens) Token(ctx context.Context, def *provider.Definition) (string, error) {
	if t == nil || t.api == nil {
		return "", &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Permanent, Code: "web_identity_unavailable",
			Description: "aws_web_identity is not configured in this vendor (no STS client)"}
	}
	k := cacheKey(def)
	t.mu.Lock()
	c, ok := t.cache[k]
	t.mu.Unlock()
	if ok && t.now().Add(reuseMargin).Before(c.expires) {
		return c.jwt, nil
	}
	ch := t.sf.DoChan(k, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		return t.fetch(fctx, k, def)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return "", attribute(r.Err, def)
		}
		return r.Val.(string), nil
	case <-ctx.Done():
		return "", fmt.Errorf("provider %q: waiting for the web identity token: %w", def.Name, ctx.Err())
	}
}

func (t *Tokens) fetch(ctx context.Context, k string, def *provider.Definition) (string, error) {
	aud, alg, dur := def.WebIdentity()
	out, err := t.api.GetWebIdentityToken(ctx, &sts.GetWebIdentityTokenInput{
		Audience: []string{aud}, SigningAlgorithm: aws.String(alg), DurationSeconds: aws.Int32(int32(dur)),
	})
	if err != nil {
		return "", classify(def, err)
	}
	if out.WebIdentityToken == nil || *out.WebIdentityToken == "" {
		return "", &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Transient, Code: "web_identity_empty", Description: "STS answered without a token"}
	}
	exp := t.now().Add(time.Duration(dur) * time.Second)
	if out.Expiration != nil {
		exp = *out.Expiration
	}
	t.mu.Lock()
	t.cache[k] = cached{jwt: *out.WebIdentityToken, expires: exp}
	t.mu.Unlock()
	return *out.WebIdentityToken, nil
}

// attribute reports a shared flight's error under the waiter's provider
// (a copy: the waiters share the original).
func attribute(err error, def *provider.Definition) error {
	re, ok := upstream.AsRetrieveError(err)
	if !ok || re.Provider == def.Name {
		return err
	}
	c := *re
	c.Provider = def.Name
	return &c
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
