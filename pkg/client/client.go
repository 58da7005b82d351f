// Package client is what other Go services import to get tokens from the
// vendor: through the vend Lambda (direct invoke) or the HTTP API (SigV4),
// cached in-process by pkg/localcache (the extension's cache: min_ttl on
// the token's real lifetime, fetches shared by concurrent callers and
// detached from each, a size bound), and usable as an oauth2.TokenSource
// or an http.RoundTripper.
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

	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/localcache"
)

// Token is the vendor's token JSON.
type Token = localcache.Token

// Request names a token. RejectedSHA256, when set, reports that token as
// refused by a resource server; MinTTL asks for a token with at least this
// long left (0: the vendor's default, 60 s).
type Request = localcache.Request

// Fetcher asks the vendor for a token: an HTTPFetcher or a LambdaInvoker.
type Fetcher = localcache.Fetcher

// Error is a refusal from the vendor.
type Error = localcache.Error

// defaultMinTTL is the vendor's default min_ttl, what a Request without
// one is served with.
const defaultMinTTL = 60 * time.Second

// Client caches tokens per provider, scope set and target in one
// localcache.Cache (the extension's and the agent's cache too). Safe for
// concurrent use.
type Client struct {
	cache *localcache.Cache
	f     Fetcher // for DPoP proofs, which are never cached (dpop.go)
	// last is the *oauth2.Token last handed out per key, so every caller
	// of one cached token gets the same value, as oauth2 users expect; it
	// is cleared when it outgrows the cache's bound.
	mu      sync.Mutex
	last    map[string]*oauth2.Token
	maxLast int
}

// New returns a client over f.
func New(f Fetcher) *Client { return NewWithOptions(f, localcache.Options{}) }

// NewWithOptions returns a client over f whose cache is tuned by o (size
// bound, idle drop, clock, fetch timeout).
func NewWithOptions(f Fetcher, o localcache.Options) *Client {
	maxLast := o.MaxEntries
	if maxLast <= 0 {
		maxLast = localcache.DefaultMaxEntries
	}
	return &Client{cache: localcache.New(f, o), f: f, last: map[string]*oauth2.Token{}, maxLast: maxLast}
}

// Stats are the client's cache counters (hits, fetches, evictions).
func (c *Client) Stats() localcache.Stats { return c.cache.Stats() }

// Token returns a token with at least the vendor's default min_ttl (60 s)
// left, cached or asked of the vendor once for all concurrent callers.
func (c *Client) Token(ctx context.Context, provider, scope string) (*oauth2.Token, error) {
	return c.TokenFor(ctx, Request{Provider: provider, Scope: scope})
}

// TokenFor is Token for a request that may name a target (resource,
// audience) and a MinTTL, which is sent to the vendor and which the token
// returned meets (capped at half the token's lifetime, as the vendor caps
// it). A caller's cancellation ends its own wait, not the fetch others share.
func (c *Client) TokenFor(ctx context.Context, r Request) (*oauth2.Token, error) {
	if r.MinTTL <= 0 {
		r.MinTTL = defaultMinTTL
	}
	t, err := c.cache.Get(ctx, r)
	if err != nil {
		return nil, err
	}
	return c.oauthToken(r, t)
}

// Rejected reports token as refused by a resource server and returns the
// vendor's replacement (a newer cached token, or one fetched for it).
func (c *Client) Rejected(ctx context.Context, provider, scope, token string) (*oauth2.Token, error) {
	return c.RejectedFor(ctx, Request{Provider: provider, Scope: scope}, token)
}

// RejectedFor is Rejected for a request that may name a target.
func (c *Client) RejectedFor(ctx context.Context, r Request, token string) (*oauth2.Token, error) {
	t, err := c.cache.Rejected(ctx, r, localcache.TokenSHA256(token))
	if err != nil {
		return nil, err
	}
	return c.oauthToken(r, t)
}

func (c *Client) oauthToken(r Request, t localcache.Token) (*oauth2.Token, error) {
	k := localcache.Key(r)
	c.mu.Lock()
	defer c.mu.Unlock()
	if o := c.last[k]; o != nil && o.AccessToken == t.AccessToken {
		return o, nil
	}
	exp, err := time.Parse(time.RFC3339, t.ExpiresAt)
	if err != nil {
		return nil, errors.New("token vendor: malformed token response")
	}
	o := &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType, Expiry: exp}
	if len(c.last) >= c.maxLast {
		clear(c.last)
	}
	c.last[k] = o
	return o, nil
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
// the vendor named by TOKEN_VENDOR_ID, or else by the ARN of the function
// invoked (a bare name is completed with cfg's region and the credentials'
// account; identity.FunctionARN).
func NewLambdaInvokerFromConfig(cfg aws.Config, function string) *LambdaInvoker {
	l := NewLambdaInvoker(lambda.NewFromConfig(cfg), function)
	l.Proofs = &identity.Prover{Credentials: cfg.Credentials, Region: cfg.Region,
		Endpoint: identity.EndpointFromEnv(os.Getenv, cfg.Region), VendorID: os.Getenv("TOKEN_VENDOR_ID"), Function: function}
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
	if r.DPoPCount > 1 && r.DPoPMethod != "" {
		ev["dpop_count"] = r.DPoPCount
	}
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
