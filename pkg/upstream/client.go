// Package upstream requests client-credentials tokens from OAuth 2.0
// authorization servers and revokes them (RFC 6749 §4.4, RFC 7009).
//
// The exchange is written here rather than with golang.org/x/oauth2's
// clientcredentials package because the vendor needs three things it does not
// offer: the query-string style some providers (Mobifinance) require, an error
// taxonomy that tells transient from permanent and carries Retry-After, and
// retries bounded by the caller's deadline. It stays small: build a request,
// send it with a per-attempt timeout, classify the answer.
package upstream

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

// MaxBodyBytes caps any response body read from a provider.
const MaxBodyBytes = 1 << 20

// Client talks to authorization servers. The zero value is usable; fields
// left zero take the defaults noted on them.
type Client struct {
	// HTTP sends requests. Redirects are never followed: a token endpoint
	// that redirects would have the credentials replayed elsewhere.
	HTTP *http.Client
	// AttemptTimeout bounds one request (default 5 s).
	AttemptTimeout time.Duration
	// MaxAttempts bounds tries per call, first included (default 3).
	MaxAttempts int
	// BaseBackoff and MaxBackoff shape exponential backoff with full jitter
	// (defaults 200 ms and 5 s).
	BaseBackoff, MaxBackoff time.Duration
	// MaxRetryAfter is the longest Retry-After a call waits out itself
	// (default 2 s); a longer one, or any when negative, is returned in the
	// error for the caller to schedule (the vendor turns it into a fleet-wide cooldown).
	MaxRetryAfter time.Duration
	// MaxCacheSeconds caps any token lifetime (default 86400).
	MaxCacheSeconds int64
	// Now and Sleep are seams for tests.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	// UserAgent is sent on every request.
	UserAgent string
	// Assertions signs private_key_jwt client assertions (assertion.Keys);
	// nil refuses private_key_jwt providers.
	Assertions Assertions
	// WebIdentity gets the vendor's AWS-issued JWT for aws_web_identity
	// providers (webidentity.Tokens); nil: none.
	WebIdentity WebIdentity
	// DPoP signs proofs for providers with a DPoP key (dpop.Prover); nil
	// refuses them.
	DPoP DPoP

	certClients sync.Map // certificate-authenticated registration -> *certClient
}

// certClient is the HTTP client of one certificate-authenticated
// registration, and its certificate's expiry.
type certClient struct {
	hc       *http.Client
	notAfter time.Time
}

// Assertions makes a signed client assertion for def, audience aud, with a
// fresh jti: each attempt gets its own, since servers refuse a replayed one.
type Assertions interface {
	Assertion(ctx context.Context, def *provider.Definition, aud string) (string, error)
}

// DPoP signs token-request proofs (RFC 9449 §5) with def's DPoP key and
// remembers the authorization server's nonce.
type DPoP interface {
	// TokenProof is a fresh proof for a POST to def's token endpoint,
	// carrying the latest nonce, and the signing key's thumbprint.
	TokenProof(ctx context.Context, def *provider.Definition) (proof, jkt string, err error)
	SetNonce(def *provider.Definition, nonce string)
}

// WebIdentity hands out the vendor's own AWS-issued JWT for def.
type WebIdentity interface {
	Token(ctx context.Context, def *provider.Definition) (string, error)
}

// clientAssertion signs one for an attempt ("" for other methods), for the
// endpoint it is sent to: "" is the token endpoint (audience token_url or
// assertion_audience); a revocation is sent with the revocation endpoint's
// own URL as audience, so a revoke_url on another host holds nothing it
// could redeem at the token endpoint. aws_web_identity's JWT is the
// provider's own (webidentity.Tokens), not bound to an endpoint: its
// revoke_url is on token_url's origin (provider.Validate), so it goes
// nowhere else.
func (c *Client) clientAssertion(ctx context.Context, def *provider.Definition, audience string) (string, error) {
	if def.AuthMethod == provider.AuthAWSWebIdentity {
		if c.WebIdentity == nil {
			return "", &RetrieveError{Provider: def.Name, Kind: Permanent, Code: "web_identity_unavailable", Description: "aws_web_identity is not configured in this vendor"}
		}
		return c.WebIdentity.Token(ctx, def)
	}
	if def.AuthMethod != provider.AuthPrivateKeyJWT && def.AuthMethod != provider.AuthClientSecretJWT {
		return "", nil
	}
	if c.Assertions == nil {
		return "", &RetrieveError{Provider: def.Name, Kind: Permanent, Code: "signing_key_invalid", Description: "private_key_jwt is not configured in this vendor"}
	}
	return c.Assertions.Assertion(ctx, def, audience)
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) attemptTimeout() time.Duration {
	if c.AttemptTimeout > 0 {
		return c.AttemptTimeout
	}
	return 5 * time.Second
}

// MaxAttemptsOrDefault is used by callers sizing a lease around a fetch.
func (c *Client) MaxAttemptsOrDefault() int {
	if c.MaxAttempts > 0 {
		return c.MaxAttempts
	}
	return DefaultMaxAttempts
}

// DefaultMaxAttempts is MaxAttempts when unset.
const DefaultMaxAttempts = 3

// AttemptTimeoutOrDefault is used by callers sizing a lease around a fetch.
func (c *Client) AttemptTimeoutOrDefault() time.Duration { return c.attemptTimeout() }

func (c *Client) httpClient() *http.Client {
	base := c.HTTP
	if base == nil {
		base = http.DefaultClient
	}
	if base.CheckRedirect != nil {
		return base
	}
	cp := *base
	cp.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cp
}

// clientFor is the HTTP client for def: for certificate authentication
// (RFC 8705) a client of its own that presents def's certificate, so it
// goes to that provider's endpoints and nowhere else; otherwise the shared one.
func (c *Client) clientFor(def *provider.Definition) (*http.Client, error) {
	if !def.UsesCertificate() {
		return c.httpClient(), nil
	}
	cc, err := c.certClientFor(def)
	if err != nil {
		return nil, err
	}
	return cc.hc, nil
}

// certClientFor builds def's certificate client once per certificate and key.
func (c *Client) certClientFor(def *provider.Definition) (*certClient, error) {
	sum := sha256.Sum256([]byte(def.Name + "\x00" + def.ClientCertificate + "\x00" + def.ClientKey))
	id := hex.EncodeToString(sum[:])
	if cc, ok := c.certClients.Load(id); ok {
		return cc.(*certClient), nil
	}
	cert, err := tls.X509KeyPair([]byte(def.ClientCertificate), []byte(def.ClientKey))
	if err != nil || cert.Leaf == nil {
		return nil, &RetrieveError{Provider: def.Name, Kind: Permanent, Code: "client_certificate_invalid", Description: "client_certificate and client_key do not form a usable pair"}
	}
	base := c.httpClient()
	var tr *http.Transport
	if t, ok := base.Transport.(*http.Transport); ok {
		tr = t.Clone()
	} else {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{}
	}
	// Always present it: Go's default offers a certificate only when it
	// chains to a CA the server lists, which a self-signed one
	// (self_signed_tls_client_auth) never does.
	tr.TLSClientConfig.Certificates = nil
	tr.TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	hc := *base
	hc.Transport = tr
	actual, _ := c.certClients.LoadOrStore(id, &certClient{hc: &hc, notAfter: cert.Leaf.NotAfter})
	return actual.(*certClient), nil
}

// CertificateExpiry is when def's client certificate expires (false for
// providers that do not authenticate with one).
func (c *Client) CertificateExpiry(def *provider.Definition) (time.Time, bool) {
	if !def.UsesCertificate() {
		return time.Time{}, false
	}
	cc, err := c.certClientFor(def)
	if err != nil {
		return time.Time{}, false
	}
	return cc.notAfter, true
}

// Fetch requests a token for the key's normalized scopes and target
// (RFC 8707 resource parameters, audience parameters).
func (c *Client) Fetch(ctx context.Context, def *provider.Definition, key provider.Key) (*Token, error) {
	scope := key.Scope()
	rules := ExpiryRules{DefaultExpiresIn: def.DefaultExpiresIn, MaxCacheSeconds: c.MaxCacheSeconds}
	var tok *Token
	err := c.retry(ctx, def, func(ctx context.Context) error {
		params := url.Values{"grant_type": {"client_credentials"}}
		if scope != "" {
			params.Set("scope", scope)
		}
		for _, r := range key.Target.Resources {
			params.Add("resource", r)
		}
		for _, a := range key.Target.Audiences {
			params.Add("audience", a)
		}
		for k, v := range def.ExtraParams {
			params.Set(k, v)
		}
		// A server that wants a DPoP nonce refuses the first proof with
		// use_dpop_nonce and a DPoP-Nonce header (RFC 9449 §8): that is
		// answered at once, with a new proof (and a new assertion, whose
		// jti the server may have spent), and is not a failed attempt.
		for try := 0; ; try++ {
			asn, err := c.clientAssertion(ctx, def, "")
			if err != nil {
				return err
			}
			req, err := buildRequest(ctx, def, def.TokenURL, params, asn)
			if err != nil {
				return err
			}
			proof, jkt, err := c.dpopProof(ctx, def, req)
			if err != nil {
				return err
			}
			sent := c.now()
			status, header, body, err := c.do(req, def)
			if err != nil {
				return err
			}
			if def.UsesDPoP() {
				if n := header.Get("DPoP-Nonce"); n != "" {
					c.DPoP.SetNonce(def, n)
				}
				if try == 0 && wantsNonce(status, header, body) {
					continue
				}
			}
			// The proof is redacted like the assertion: a server that echoes
			// the request must not put it in our logs and errors.
			tok, err = ParseTokenResponse(def.Name, status, header, body, sent, scope, rules, def.ClientSecret, asn, proof)
			if err == nil && tok.TokenType == TokenTypeDPoP {
				tok.JKT = jkt
			}
			return err
		}
	})
	if re, ok := AsRetrieveError(err); ok && re.IsClientAuth() && def.KMSKeyID != "" {
		// The provider no longer accepts our key: after an alias was
		// re-pointed, the key cached behind it may be the stale one.
		if f, ok := c.Assertions.(interface{ Forget(*provider.Definition) }); ok {
			f.Forget(def)
		}
	}
	return tok, err
}

// dpopProof sets req's DPoP header for a provider with a DPoP key and
// returns the proof and the key's thumbprint ("" without DPoP).
func (c *Client) dpopProof(ctx context.Context, def *provider.Definition, req *http.Request) (proof, jkt string, err error) {
	if !def.UsesDPoP() {
		return "", "", nil
	}
	if c.DPoP == nil {
		return "", "", &RetrieveError{Provider: def.Name, Kind: Permanent, Code: "dpop_key_invalid", Description: "DPoP is not configured in this vendor"}
	}
	proof, jkt, err = c.DPoP.TokenProof(ctx, def)
	if err != nil {
		return "", "", err
	}
	req.Header.Set("DPoP", proof)
	return proof, jkt, nil
}

// wantsNonce reports a refusal asking for a DPoP nonce: error
// use_dpop_nonce (in the body, or WWW-Authenticate for a 401) with a
// DPoP-Nonce header to use.
func wantsNonce(status int, header http.Header, body []byte) bool {
	if (status != http.StatusBadRequest && status != http.StatusUnauthorized) || header.Get("DPoP-Nonce") == "" {
		return false
	}
	if strings.Contains(header.Get("WWW-Authenticate"), "use_dpop_nonce") {
		return true
	}
	var e struct {
		Error string `json:"error"`
	}
	return json.Unmarshal(body, &e) == nil && e.Error == "use_dpop_nonce"
}

// ErrNoRevokeURL is returned by Revoke for providers without a revoke_url.
var ErrNoRevokeURL = errors.New("provider has no revoke_url")

// Revoke asks the provider to revoke an access token (RFC 7009). A 200 means
// revoked, even for a token the server does not know.
func (c *Client) Revoke(ctx context.Context, def *provider.Definition, token string) error {
	if def.RevokeURL == "" {
		return ErrNoRevokeURL
	}
	return c.retry(ctx, def, func(ctx context.Context) error {
		params := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
		asn, err := c.clientAssertion(ctx, def, def.RevokeURL)
		if err != nil {
			return err
		}
		req, err := buildRequest(ctx, def, def.RevokeURL, params, asn)
		if err != nil {
			return err
		}
		status, header, body, err := c.do(req, def)
		if err != nil {
			return err
		}
		if status == http.StatusOK {
			return nil
		}
		return errorFromResponse(def.Name, status, header, body, c.now(), def.ClientSecret, token, asn)
	})
}

// buildRequest places client authentication and params as def.AuthMethod
// says; assertion is the signed client assertion for private_key_jwt.
func buildRequest(ctx context.Context, def *provider.Definition, endpoint string, params url.Values, assertion string) (*http.Request, error) {
	if err := provider.CheckEndpoint(endpoint); err != nil {
		return nil, &RetrieveError{Provider: def.Name, Kind: Permanent, Code: "invalid_endpoint", Description: err.Error()}
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, &RetrieveError{Provider: def.Name, Kind: Permanent, Code: "invalid_endpoint", Description: "unparsable URL"}
	}
	var body string
	switch def.AuthMethod {
	case provider.AuthQuery:
		// Mobifinance style: everything in the query string, empty form body.
		q := u.Query()
		q.Set("client_id", def.ClientID)
		q.Set("client_secret", def.ClientSecret)
		for k, vs := range params {
			q[k] = vs
		}
		u.RawQuery = q.Encode()
	case provider.AuthPost:
		params.Set("client_id", def.ClientID)
		params.Set("client_secret", def.ClientSecret)
		body = params.Encode()
	case provider.AuthTLS, provider.AuthSelfSignedTLS:
		// RFC 8705 §2: the certificate authenticates; client_id names the client.
		params.Set("client_id", def.ClientID)
		body = params.Encode()
	case provider.AuthPrivateKeyJWT, provider.AuthClientSecretJWT, provider.AuthAWSWebIdentity:
		// RFC 7523 §2.2; client_id too, which RFC 6749 §3.2.1 allows and
		// many servers want.
		params.Set("client_id", def.ClientID)
		params.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		params.Set("client_assertion", assertion)
		body = params.Encode()
	default:
		body = params.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(body))
	if err != nil {
		return nil, &RetrieveError{Provider: def.Name, Kind: Permanent, Code: "invalid_endpoint", Description: "cannot build request"}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if def.AuthMethod == provider.AuthBasic {
		// RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
		cred := url.QueryEscape(def.ClientID) + ":" + url.QueryEscape(def.ClientSecret)
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(cred)))
	}
	return req, nil
}

// do sends one attempt and reads at most MaxBodyBytes. Network errors lose
// their URL: for the query style it holds the client secret.
func (c *Client) do(req *http.Request, def *provider.Definition) (int, http.Header, []byte, error) {
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	hc, err := c.clientFor(def)
	if err != nil {
		return 0, nil, nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, nil, nil, &RetrieveError{Provider: def.Name, Kind: Transient, Code: "network_error", Err: scrub(err, def.ClientSecret)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes+1))
	if err != nil {
		return 0, nil, nil, &RetrieveError{Provider: def.Name, Kind: Transient, StatusCode: resp.StatusCode, Code: "network_error", Err: scrub(err, def.ClientSecret)}
	}
	if len(body) > MaxBodyBytes {
		return 0, nil, nil, &RetrieveError{Provider: def.Name, Kind: Transient, StatusCode: resp.StatusCode, Code: "invalid_response", Description: "response body larger than 1 MiB"}
	}
	return resp.StatusCode, resp.Header, body, nil
}

// scrub drops an error's text if it contains the secret in any form.
func scrub(err error, secret string) error {
	if err == nil || secret == "" {
		return err
	}
	if msg := err.Error(); redactCredentials(msg, []string{secret}) != msg {
		return errors.New("request failed (details withheld: they contained a credential)")
	}
	return err
}

// retry runs attempt until it succeeds, fails permanently, runs out of
// attempts, or the next wait would pass the caller's deadline.
func (c *Client) retry(ctx context.Context, def *provider.Definition, attempt func(context.Context) error) error {
	maxAttempts := c.MaxAttemptsOrDefault()
	var last *RetrieveError
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, c.attemptTimeout())
		err := attempt(actx)
		timedOut := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil {
			return nil
		}
		re, ok := AsRetrieveError(err)
		if !ok {
			re = &RetrieveError{Provider: def.Name, Kind: Transient, Code: "network_error", Err: scrub(err, def.ClientSecret)}
		}
		if timedOut && re.StatusCode == 0 {
			re.Code = "timeout"
			re.Err = fmt.Errorf("attempt exceeded %s", c.attemptTimeout())
		}
		if ctx.Err() != nil && re.StatusCode == 0 {
			re.Code = "deadline"
			re.Err = ctx.Err()
		}
		re.Attempts = n
		last = re
		if re.Kind == Permanent || n >= maxAttempts || ctx.Err() != nil {
			return last
		}
		wait := c.backoff(n)
		if re.RetryAfter > 0 {
			if c.MaxRetryAfter < 0 || re.RetryAfter > c.maxRetryAfter() {
				return last
			}
			wait = re.RetryAfter
		} else if re.Kind == RateLimited && c.MaxRetryAfter < 0 {
			return last
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return last
		}
		if err := c.sleep(ctx, wait); err != nil {
			return last
		}
	}
}

func (c *Client) maxRetryAfter() time.Duration {
	if c.MaxRetryAfter > 0 {
		return c.MaxRetryAfter
	}
	return 2 * time.Second
}

// backoff is "full jitter": uniform in [0, min(max, base·2^(n-1))].
func (c *Client) backoff(n int) time.Duration {
	base, maxB := c.BaseBackoff, c.MaxBackoff
	if base <= 0 {
		base = 200 * time.Millisecond
	}
	if maxB <= 0 {
		maxB = 5 * time.Second
	}
	ceil := base << (n - 1)
	if ceil > maxB || ceil <= 0 {
		ceil = maxB
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	if c.Sleep != nil {
		return c.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
