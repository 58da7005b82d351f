package identity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"golang.org/x/sync/singleflight"

	"github.com/token-vendor/token-vendor/pkg/principal"
)

// VendorHeader names the vendor a proof is for. It must be among the signed
// headers, so a proof made for one vendor (or any other service that
// verifies GetCallerIdentity, such as Vault) cannot be replayed to another.
const VendorHeader = "X-Token-Vendor-Id"

// MaxProofAge is how long a proof is accepted after it was signed.
const MaxProofAge = 5 * time.Minute

// futureSkew is how far ahead of the vendor's clock a proof may be dated.
const futureSkew = time.Minute

const getCallerIdentityBody = "Action=GetCallerIdentity&Version=2011-06-15"

// Proof is a signed sts:GetCallerIdentity request, in the shape Vault's IAM
// auth method takes: method, and base64 of the URL, the body and the JSON
// headers. Possession of a fresh one proves possession of the signer's
// credentials; it is never logged or returned.
type Proof struct {
	Method  string `json:"iam_http_request_method"`
	URL     string `json:"iam_request_url"`
	Body    string `json:"iam_request_body"`
	Headers string `json:"iam_request_headers"`
}

// DefaultEndpoint is STS's regional endpoint.
func DefaultEndpoint(region string) string {
	if strings.HasPrefix(region, "cn-") {
		return "https://sts." + region + ".amazonaws.com.cn/"
	}
	return "https://sts." + region + ".amazonaws.com/"
}

// Sign makes a proof with creds for the vendor vendorID, signed for the STS
// endpoint (the vendor's; DefaultEndpoint of its region).
func Sign(ctx context.Context, creds aws.Credentials, region, endpoint, vendorID string, now time.Time) (*Proof, error) {
	if vendorID == "" {
		return nil, errors.New("identity proof: the vendor id is empty")
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("identity proof: STS endpoint %q is not a URL", endpoint)
	}
	if u.Path == "" {
		u.Path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(getCallerIdentityBody))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	req.Header.Set(VendorHeader, vendorID)
	sum := sha256.Sum256([]byte(getCallerIdentityBody))
	if err := v4.NewSigner().SignHTTP(ctx, creds, req, fmt.Sprintf("%x", sum), "sts", region, now); err != nil {
		return nil, fmt.Errorf("identity proof: sign: %w", err)
	}
	req.Header.Set("Host", u.Host) // signed as host; Vault's shape carries it
	hdr, _ := json.Marshal(req.Header)
	b64 := base64.StdEncoding.EncodeToString
	return &Proof{Method: http.MethodPost, URL: b64([]byte(u.String())), Body: b64([]byte(getCallerIdentityBody)), Headers: b64(hdr)}, nil
}

// Verifier turns proofs into callers by sending them to STS.
type Verifier struct {
	// Endpoint is the only place proofs are sent: the vendor's configured
	// STS endpoint, never a host taken from the proof.
	Endpoint string
	// VendorID is this vendor's name (the stack name in AWS).
	VendorID string
	HTTP     *http.Client
	Now      func() time.Time

	once     sync.Once
	endpoint *url.URL
	sf       singleflight.Group
	mu       sync.Mutex
	cache    map[[32]byte]cached
}

type cached struct {
	c     Caller
	until time.Time
}

// maxCached bounds the verified-proof cache (entries live ≤ MaxProofAge).
const maxCached = 10000

// maxProofBytes bounds a proof's decoded parts.
const maxProofBytes = 16 << 10

func (v *Verifier) init() {
	v.once.Do(func() {
		v.endpoint, _ = url.Parse(v.Endpoint)
		if v.HTTP == nil {
			v.HTTP = &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		}
		if v.Now == nil {
			v.Now = time.Now
		}
		v.cache = map[[32]byte]cached{}
	})
}

// parsed is a proof that passed the offline checks.
type parsed struct {
	body    []byte
	headers http.Header
	signed  time.Time
	key     [32]byte
}

func refuse(reason, format string, args ...any) Caller {
	return Caller{Path: PathInvoke, Problem: reason, Detail: fmt.Sprintf(format, args...)}
}

// Verify returns the caller p proves, or an unverified caller saying why not.
// A verified proof is remembered until it expires, so a caller reusing its
// proof costs one STS request per proof, not per vend.
func (v *Verifier) Verify(ctx context.Context, p *Proof) Caller {
	v.init()
	if p == nil {
		return Anonymous(PathInvoke, "direct invoke carries no identity proof (a signed sts:GetCallerIdentity request)")
	}
	if v.endpoint == nil || v.endpoint.Host == "" || v.VendorID == "" {
		return refuse(NoIdentity, "this vendor is not configured to verify identity proofs")
	}
	pp, bad := v.check(p)
	if bad != nil {
		return *bad
	}
	v.mu.Lock()
	hit, ok := v.cache[pp.key]
	v.mu.Unlock()
	now := v.Now()
	if ok && now.Before(hit.until) {
		return hit.c
	}
	ch := v.sf.DoChan(string(pp.key[:]), func() (any, error) {
		// Detached from one caller's cancellation: others may share the answer.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		c := v.ask(sctx, pp)
		if c.Verified() {
			v.mu.Lock()
			if len(v.cache) >= maxCached {
				for k, e := range v.cache {
					if !now.Before(e.until) || len(v.cache) >= maxCached {
						delete(v.cache, k)
					}
				}
			}
			v.cache[pp.key] = cached{c: c, until: pp.signed.Add(MaxProofAge)}
			v.mu.Unlock()
		}
		return c, nil
	})
	select {
	case r := <-ch:
		return r.Val.(Caller)
	case <-ctx.Done():
		return Caller{Path: PathInvoke, Problem: STSUnavailable, Detail: "the caller's deadline passed while STS verified the identity proof", Retryable: true}
	}
}

// check does everything that needs no network: shape, target, vendor, age.
func (v *Verifier) check(p *Proof) (parsed, *Caller) {
	fail := func(reason, format string, args ...any) (parsed, *Caller) {
		c := refuse(reason, format, args...)
		return parsed{}, &c
	}
	dec := func(s string) ([]byte, bool) {
		if len(s) > maxProofBytes*2 {
			return nil, false
		}
		b, err := base64.StdEncoding.DecodeString(s)
		return b, err == nil && len(b) <= maxProofBytes
	}
	if p.Method != http.MethodPost {
		return fail(ProofMalformed, "identity proof: iam_http_request_method must be POST")
	}
	rawURL, ok1 := dec(p.URL)
	body, ok2 := dec(p.Body)
	rawHdr, ok3 := dec(p.Headers)
	if !ok1 || !ok2 || !ok3 {
		return fail(ProofMalformed, "identity proof: iam_request_url, iam_request_body and iam_request_headers must be base64 (standard, padded)")
	}
	u, err := url.Parse(string(rawURL))
	if err != nil || u.Scheme != v.endpoint.Scheme || !strings.EqualFold(u.Host, v.endpoint.Host) || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return fail(ProofOtherHost, "identity proof: signed for another endpoint than this vendor's STS endpoint %s", v.endpoint.Host)
	}
	form, err := url.ParseQuery(string(body))
	if err != nil || len(form) != 2 || form.Get("Action") != "GetCallerIdentity" || form.Get("Version") != "2011-06-15" || len(form["Action"]) != 1 || len(form["Version"]) != 1 {
		return fail(ProofMalformed, "identity proof: the body must be exactly Action=GetCallerIdentity&Version=2011-06-15")
	}
	var hv map[string]any
	if err := json.Unmarshal(rawHdr, &hv); err != nil {
		return fail(ProofMalformed, "identity proof: iam_request_headers must be a JSON object of header names to values")
	}
	h := http.Header{}
	for k, val := range hv {
		switch x := val.(type) {
		case string:
			h.Add(k, x)
		case []any:
			for _, e := range x {
				s, ok := e.(string)
				if !ok {
					return fail(ProofMalformed, "identity proof: header values must be strings")
				}
				h.Add(k, s)
			}
		default:
			return fail(ProofMalformed, "identity proof: header values must be strings")
		}
	}
	if len(h.Values("Authorization")) != 1 {
		return fail(ProofMalformed, "identity proof: want one Authorization header (AWS4-HMAC-SHA256)")
	}
	signedHeaders, scope, ok := parseAuthorization(h.Get("Authorization"))
	if !ok {
		return fail(ProofMalformed, "identity proof: the Authorization header is not a SigV4 (AWS4-HMAC-SHA256) signature")
	}
	if parts := strings.Split(scope, "/"); len(parts) != 4 || parts[2] != "sts" || parts[3] != "aws4_request" {
		return fail(ProofMalformed, "identity proof: not signed for the sts service")
	}
	if !slices.Contains(signedHeaders, strings.ToLower(VendorHeader)) {
		return fail(ProofOtherVendor, "identity proof: %s is not among the signed headers, so the proof names no vendor", VendorHeader)
	}
	for _, need := range []string{"host", "x-amz-date"} {
		if !slices.Contains(signedHeaders, need) {
			return fail(ProofMalformed, "identity proof: %s is not among the signed headers", need)
		}
	}
	if vs := h.Values(VendorHeader); len(vs) != 1 || vs[0] != v.VendorID {
		return fail(ProofOtherVendor, "identity proof: made for another vendor than %q", v.VendorID)
	}
	if host := h.Get("Host"); host != "" && !strings.EqualFold(host, v.endpoint.Host) {
		return fail(ProofOtherHost, "identity proof: signed for another endpoint than this vendor's STS endpoint %s", v.endpoint.Host)
	}
	signed, err := time.Parse("20060102T150405Z", h.Get("X-Amz-Date"))
	if err != nil {
		return fail(ProofMalformed, "identity proof: X-Amz-Date is missing or malformed")
	}
	now := v.Now()
	if now.Sub(signed) > MaxProofAge {
		return fail(ProofExpired, "identity proof: signed %s ago; a proof is valid for %s", now.Sub(signed).Round(time.Second), MaxProofAge)
	}
	if signed.Sub(now) > futureSkew {
		return fail(ProofExpired, "identity proof: dated %s in the future (clock skew)", signed.Sub(now).Round(time.Second))
	}
	h.Del("Host")
	h.Del("Content-Length")
	keyBuf := new(bytes.Buffer)
	keyBuf.Write(rawURL)
	keyBuf.WriteByte(0)
	keyBuf.Write(body)
	keyBuf.WriteByte(0)
	_ = h.Write(keyBuf) // sorted by name
	return parsed{body: body, headers: h, signed: signed, key: sha256.Sum256(keyBuf.Bytes())}, nil
}

// parseAuthorization reads "AWS4-HMAC-SHA256 Credential=AK/DATE/REGION/SERVICE/aws4_request,
// SignedHeaders=a;b, Signature=hex" into the signed header names and the scope.
func parseAuthorization(s string) (signed []string, scope string, ok bool) {
	rest, found := strings.CutPrefix(s, "AWS4-HMAC-SHA256 ")
	if !found {
		return nil, "", false
	}
	var sig string
	for _, f := range strings.Split(rest, ",") {
		k, val, _ := strings.Cut(strings.TrimSpace(f), "=")
		switch k {
		case "Credential":
			if _, sc, ok := strings.Cut(val, "/"); ok {
				scope = sc
			}
		case "SignedHeaders":
			signed = strings.Split(val, ";")
		case "Signature":
			sig = val
		}
	}
	return signed, scope, scope != "" && len(signed) > 0 && sig != ""
}

type stsAnswer struct {
	Result struct {
		Arn     string `xml:"Arn"`
		Account string `xml:"Account"`
	} `xml:"GetCallerIdentityResult"`
}

type stsError struct {
	Code string `xml:"Error>Code"`
}

// ask sends the proof's request to the configured endpoint.
func (v *Verifier) ask(ctx context.Context, pp parsed) Caller {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, v.endpoint.String(), bytes.NewReader(pp.body))
	if err != nil {
		return refuse(STSUnavailable, "cannot build the STS request")
	}
	req.Header = pp.headers.Clone()
	req.Host = v.endpoint.Host
	resp, err := v.HTTP.Do(req)
	if err != nil {
		c := refuse(STSUnavailable, "STS could not be reached to verify the identity proof; retry")
		c.Retryable = true
		return c
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusOK:
		var a stsAnswer
		if err := xml.Unmarshal(data, &a); err != nil {
			return refuse(STSUnavailable, "STS answered the identity proof with something other than GetCallerIdentityResponse")
		}
		if _, err := principal.Parse(a.Result.Arn); err != nil {
			return refuse(SignatureRejected, "STS verified the proof but named no principal ARN")
		}
		return Caller{Path: PathInvoke, ARN: a.Result.Arn, Account: a.Result.Account}
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		c := refuse(STSUnavailable, "STS answered %d while verifying the identity proof; retry", resp.StatusCode)
		c.Retryable = true
		return c
	}
	var e stsError
	_ = xml.Unmarshal(data, &e)
	if e.Code == "Throttling" || e.Code == "RequestLimitExceeded" {
		c := refuse(STSUnavailable, "STS throttled the identity check; retry")
		c.Retryable = true
		return c
	}
	code := e.Code
	if !codeRE(code) {
		code = fmt.Sprint(resp.StatusCode)
	}
	return refuse(SignatureRejected, "STS did not accept the identity proof's signature (%s)", code)
}

// codeRE admits an STS error code (letters only) into a description.
func codeRE(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// Prover signs proofs with the credentials a client already runs with and
// reuses each for most of its life, so the vendor verifies it with STS once
// and then answers from its cache.
type Prover struct {
	Credentials aws.CredentialsProvider
	Region      string
	Endpoint    string // the vendor's STS endpoint: DefaultEndpoint(Region) unless overridden
	VendorID    string
	Now         func() time.Time

	mu    sync.Mutex
	proof *Proof
	until time.Time
}

// proofReuse is how long a Prover hands out one proof: a minute short of
// MaxProofAge, so a proof is never presented near its end.
const proofReuse = MaxProofAge - time.Minute

// Proof returns a fresh or recent proof.
func (p *Prover) Proof(ctx context.Context) (*Proof, error) {
	now := time.Now()
	if p.Now != nil {
		now = p.Now()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proof != nil && now.Before(p.until) {
		return p.proof, nil
	}
	creds, err := p.Credentials.Retrieve(ctx)
	if err != nil {
		return nil, fmt.Errorf("identity proof: credentials: %w", err)
	}
	endpoint := p.Endpoint
	if endpoint == "" {
		endpoint = DefaultEndpoint(p.Region)
	}
	proof, err := Sign(ctx, creds, p.Region, endpoint, p.VendorID, now)
	if err != nil {
		return nil, err
	}
	p.proof, p.until = proof, now.Add(proofReuse)
	if creds.CanExpire && creds.Expires.Add(-time.Minute).Before(p.until) {
		p.until = creds.Expires.Add(-time.Minute)
	}
	return proof, nil
}

// VendorIDOf is the vendor id of a vend function named by name or ARN
// (arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER], ACCOUNT:function:NAME,
// NAME[:QUALIFIER]): its function name, which the vendor uses unless told otherwise.
func VendorIDOf(function string) string {
	parts := strings.Split(function, ":")
	for i, s := range parts {
		if s == "function" && i+1 < len(parts) {
			return parts[i+1]
		}
	}
	return parts[0]
}

// EndpointFromEnv is the STS endpoint proofs are signed for and sent to:
// AWS_ENDPOINT_URL_STS (as the SDK reads it) or the region's endpoint.
func EndpointFromEnv(getenv func(string) string, region string) string {
	if e := getenv("AWS_ENDPOINT_URL_STS"); e != "" {
		return e
	}
	if e := getenv("AWS_ENDPOINT_URL"); e != "" {
		return e
	}
	return DefaultEndpoint(region)
}
