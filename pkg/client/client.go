// Package client is what other Go services import to get tokens from the
// vendor: through the vend Lambda (direct invoke) or the HTTP API (SigV4),
// cached in-process until the token's refresh time, shared by concurrent
// callers, and usable as an oauth2.TokenSource or an http.RoundTripper.
//
//	c := client.New(client.NewLambdaInvoker(lambda.NewFromConfig(cfg), "token-vendor-VendFunction-…"))
//	httpClient := &http.Client{Transport: c.Transport(nil, "kopokopo", "")}
package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"

	"github.com/token-vendor/token-vendor/pkg/identity"
)

// Token is the vendor's token JSON.
type Token struct {
	Provider    string `json:"provider"`
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	ExpiresAt   string `json:"expires_at"`
	IssuedAt    string `json:"issued_at,omitempty"`
	Scope       string `json:"scope"`
	// DPoPProof is the proof the vendor signed for the request named by
	// Request.DPoPMethod and DPoPURL (token_type DPoP).
	DPoPProof string `json:"dpop_proof,omitempty"`
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
	// MinTTL asks for a token with at least this long left (0: the vendor's default).
	MinTTL time.Duration
	// DPoPMethod and DPoPURL ask for a DPoP proof for that request, and
	// DPoPNonce is the resource server's DPoP-Nonce if it demanded one.
	DPoPMethod, DPoPURL, DPoPNonce string
}

// Fetcher asks the vendor for a token: an HTTPFetcher or a LambdaInvoker.
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

// Client caches tokens per provider and scope. Safe for concurrent use.
type Client struct {
	f   Fetcher
	now func() time.Time
	mu  sync.Mutex
	got map[string]cached
	sf  singleflight.Group
}

type cached struct {
	tok       *oauth2.Token
	refreshAt time.Time
}

// New returns a client over f.
func New(f Fetcher) *Client { return &Client{f: f, now: time.Now, got: map[string]cached{}} }

// Token returns a cached token until its refresh time (expires_at minus
// max(60 s, a fifth of its life)), then asks the vendor once for all callers.
func (c *Client) Token(ctx context.Context, provider, scope string) (*oauth2.Token, error) {
	return c.TokenFor(ctx, Request{Provider: provider, Scope: scope})
}

// cacheKey names a request's cached token: provider, scope and target.
func cacheKey(r Request) string {
	return r.Provider + "\x00" + r.Scope + "\x00" + r.Resource + "\x00" + r.Audience
}

func (c *Client) fetch(ctx context.Context, key string, req Request) (*oauth2.Token, error) {
	v, err, _ := c.sf.Do(key+"\x00"+req.RejectedSHA256, func() (any, error) {
		t, err := c.f.Fetch(ctx, req)
		if err != nil {
			return nil, err
		}
		exp, err := time.Parse(time.RFC3339, t.ExpiresAt)
		if err != nil || t.AccessToken == "" {
			return nil, errors.New("token vendor: malformed token response")
		}
		life := t.Lifetime(exp)
		tok := (&oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType, Expiry: exp})
		c.mu.Lock()
		c.got[key] = cached{tok: tok, refreshAt: exp.Add(-max(60*time.Second, life/5))}
		c.mu.Unlock()
		return tok, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*oauth2.Token), nil
}

// TokenFor is Token for a request with a target (resource, audience).
func (c *Client) TokenFor(ctx context.Context, r Request) (*oauth2.Token, error) {
	key := cacheKey(r)
	c.mu.Lock()
	e, ok := c.got[key]
	c.mu.Unlock()
	if ok && c.now().Before(e.refreshAt) {
		return e.tok, nil
	}
	return c.fetch(ctx, key, Request{Provider: r.Provider, Scope: r.Scope, Resource: r.Resource, Audience: r.Audience})
}

// Rejected reports token as refused by a resource server and returns the
// vendor's replacement (a newer cached token, or one fetched for it).
func (c *Client) Rejected(ctx context.Context, provider, scope, token string) (*oauth2.Token, error) {
	sum := sha256.Sum256([]byte(token))
	key := cacheKey(Request{Provider: provider, Scope: scope})
	c.mu.Lock()
	if e, ok := c.got[key]; ok && e.tok.AccessToken == token {
		delete(c.got, key)
	}
	c.mu.Unlock()
	return c.fetch(ctx, key, Request{Provider: provider, Scope: scope, RejectedSHA256: hex.EncodeToString(sum[:])})
}

// TokenSource adapts the client to golang.org/x/oauth2.
func (c *Client) TokenSource(ctx context.Context, provider, scope string) oauth2.TokenSource {
	return tokenSource{ctx: ctx, c: c, provider: provider, scope: scope}
}

type tokenSource struct {
	ctx             context.Context
	c               *Client
	provider, scope string
}

func (s tokenSource) Token() (*oauth2.Token, error) { return s.c.Token(s.ctx, s.provider, s.scope) }

// Transport adds the token to every request; when the resource server
// answers 401 it reports the token as rejected and retries once with the
// replacement. base nil means http.DefaultTransport.
func (c *Client) Transport(base http.RoundTripper, provider, scope string) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{base: base, c: c, provider: provider, scope: scope}
}

type transport struct {
	base            http.RoundTripper
	c               *Client
	provider, scope string
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := t.c.Token(req.Context(), t.provider, t.scope)
	if err != nil {
		return nil, err
	}
	// The body may be needed twice; requests that cannot replay it are not retried.
	resp, err := t.base.RoundTrip(withToken(req, tok))
	if err != nil || resp.StatusCode != http.StatusUnauthorized || (req.Body != nil && req.GetBody == nil) {
		return resp, err
	}
	fresh, rerr := t.c.Rejected(req.Context(), t.provider, t.scope, tok.AccessToken)
	if rerr != nil || fresh.AccessToken == tok.AccessToken {
		return resp, nil
	}
	retry := req.Clone(req.Context())
	if req.GetBody != nil {
		if retry.Body, err = req.GetBody(); err != nil {
			return resp, nil
		}
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return t.base.RoundTrip(withToken(retry, fresh))
}

func withToken(req *http.Request, tok *oauth2.Token) *http.Request {
	r := req.Clone(req.Context())
	tok.SetAuthHeader(r)
	return r
}

// HTTPFetcher calls the HTTP API, signing with SigV4 for execute-api when
// Credentials are set (AWS_IAM routes require it).
type HTTPFetcher struct {
	BaseURL     string
	HTTP        *http.Client
	Credentials aws.CredentialsProvider
	Region      string
	signer      *v4.Signer
}

// NewHTTPFetcher returns a fetcher for baseURL; creds may be nil for local mode.
func NewHTTPFetcher(baseURL string, creds aws.CredentialsProvider, region string) *HTTPFetcher {
	return &HTTPFetcher{BaseURL: strings.TrimRight(baseURL, "/"), HTTP: &http.Client{Timeout: 30 * time.Second}, Credentials: creds, Region: region, signer: v4.NewSigner()}
}

// Fetch asks GET /v1/tokens/{provider} (or POST …/rejected).
func (h *HTTPFetcher) Fetch(ctx context.Context, r Request) (*Token, error) {
	q := url.Values{}
	if r.Scope != "" {
		q.Set("scope", r.Scope)
	}
	if r.MinTTL > 0 && r.RejectedSHA256 == "" {
		q.Set("min_ttl", strconv.FormatInt(int64(r.MinTTL/time.Second), 10))
	}
	if r.Resource != "" {
		q.Set("resource", r.Resource)
	}
	if r.Audience != "" {
		q.Set("audience", r.Audience)
	}
	setProofParams(r, q.Set)
	target := h.BaseURL + "/v1/tokens/" + url.PathEscape(r.Provider)
	method, body := http.MethodGet, []byte(nil)
	if r.RejectedSHA256 != "" {
		method, target = http.MethodPost, target+"/rejected"
		body, _ = json.Marshal(map[string]string{"token_sha256": r.RejectedSHA256})
	}
	if len(q) > 0 {
		target += "?" + strings.ReplaceAll(q.Encode(), "+", "%20")
	}
	req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if h.Credentials != nil {
		creds, err := h.Credentials.Retrieve(ctx)
		if err != nil {
			return nil, fmt.Errorf("token vendor: credentials: %w", err)
		}
		sum := sha256.Sum256(body)
		if err := h.signer.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "execute-api", h.Region, time.Now()); err != nil {
			return nil, fmt.Errorf("token vendor: sign: %w", err)
		}
	}
	resp, err := h.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		json.Unmarshal(data, &e)
		ve := &Error{Status: resp.StatusCode, Code: e.Error, Message: e.Description}
		if s := resp.Header.Get("Retry-After"); s != "" {
			if n, err := time.ParseDuration(s + "s"); err == nil {
				ve.RetryAfter = n
			}
		}
		if ve.Code == "" {
			ve.Code = http.StatusText(resp.StatusCode)
		}
		return nil, ve
	}
	var t Token
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, errors.New("token vendor: malformed token response")
	}
	return &t, nil
}

// InvokeAPI is the part of the Lambda client the invoker uses.
type InvokeAPI interface {
	Invoke(ctx context.Context, in *lambda.InvokeInput, optFns ...func(*lambda.Options)) (*lambda.InvokeOutput, error)
}

// ProofSource yields identity proofs (identity.Prover).
type ProofSource interface {
	Proof(ctx context.Context) (*identity.Proof, error)
}

// LambdaInvoker invokes the vend function directly.
type LambdaInvoker struct {
	api      InvokeAPI
	function string
	// Proofs, when set, attaches who is invoking to every request: the vend
	// function has STS verify it (docs/design.md §11).
	Proofs ProofSource
}

// NewLambdaInvoker returns a fetcher invoking function (name or ARN), with
// no identity proof; NewLambdaInvokerFromConfig attaches one.
func NewLambdaInvoker(api InvokeAPI, function string) *LambdaInvoker {
	return &LambdaInvoker{api: api, function: function}
}

// NewLambdaInvokerFromConfig invokes function with cfg's credentials and
// proves them to the vendor with a signed sts:GetCallerIdentity request for
// the vendor named by TOKEN_VENDOR_ID, or else by the function's name.
func NewLambdaInvokerFromConfig(cfg aws.Config, function string) *LambdaInvoker {
	l := NewLambdaInvoker(lambda.NewFromConfig(cfg), function)
	vendorID := os.Getenv("TOKEN_VENDOR_ID")
	if vendorID == "" {
		vendorID = identity.VendorIDOf(function)
	}
	l.Proofs = &identity.Prover{Credentials: cfg.Credentials, Region: cfg.Region,
		Endpoint: identity.EndpointFromEnv(os.Getenv, cfg.Region), VendorID: vendorID}
	return l
}

// Fetch invokes the function with {"provider","scope"[,"rejected_token_sha256"]}.
func (l *LambdaInvoker) Fetch(ctx context.Context, r Request) (*Token, error) {
	ev := map[string]any{"provider": r.Provider, "scope": r.Scope, "rejected_token_sha256": r.RejectedSHA256}
	if r.Resource != "" {
		ev["resource"] = r.Resource
	}
	if r.Audience != "" {
		ev["audience"] = r.Audience
	}
	if r.MinTTL > 0 {
		ev["min_ttl"] = int64(r.MinTTL / time.Second)
	}
	setProofParams(r, func(k, v string) { ev[k] = v })
	if l.Proofs != nil {
		p, err := l.Proofs.Proof(ctx)
		if err != nil {
			return nil, fmt.Errorf("token vendor: %w", err)
		}
		ev["identity"] = p
	}
	payload, _ := json.Marshal(ev)
	out, err := l.api.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String(l.function), Payload: payload})
	if err != nil {
		return nil, fmt.Errorf("token vendor: invoke: %w", err)
	}
	if out.FunctionError != nil {
		var e struct {
			Message string `json:"errorMessage"`
			Type    string `json:"errorType"`
		}
		json.Unmarshal(out.Payload, &e)
		return nil, &Error{Code: e.Type, Message: e.Message}
	}
	var t Token
	if err := json.Unmarshal(out.Payload, &t); err != nil {
		return nil, errors.New("token vendor: malformed token response")
	}
	return &t, nil
}
