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
	"hash/maphash"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"
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
	req, err := signedRequest(ctx, creds, region, endpoint, vendorID, now)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Host", req.URL.Host) // signed as host; Vault's shape carries it
	hdr, _ := json.Marshal(req.Header)
	b64 := base64.StdEncoding.EncodeToString
	return &Proof{Method: http.MethodPost, URL: b64([]byte(req.URL.String())), Body: b64([]byte(getCallerIdentityBody)), Headers: b64(hdr)}, nil
}

// signedRequest is a GetCallerIdentity request to endpoint signed with
// creds, naming vendorID when it is not empty.
func signedRequest(ctx context.Context, creds aws.Credentials, region, endpoint, vendorID string, now time.Time) (*http.Request, error) {
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
	if vendorID != "" {
		req.Header.Set(VendorHeader, vendorID)
	}
	sum := sha256.Sum256([]byte(getCallerIdentityBody))
	if err := v4.NewSigner().SignHTTP(ctx, creds, req, fmt.Sprintf("%x", sum), "sts", region, now); err != nil {
		return nil, fmt.Errorf("identity proof: sign: %w", err)
	}
	return req, nil
}

// Verifier turns proofs into callers by sending them to STS.
type Verifier struct {
	// Endpoint is the only place proofs are sent: the vendor's configured
	// STS endpoint, never a host taken from the proof.
	Endpoint string
	// VendorID is the X-Token-Vendor-Id a proof must carry. Empty means the
	// unqualified ARN of the function being invoked, read from the
	// invocation's Lambda context (its InvokedFunctionArn): account, region
	// and name, so two stacks never accept each other's proofs.
	VendorID string
	HTTP     *http.Client
	Now      func() time.Time

	once     sync.Once
	endpoint *url.URL
	sf       singleflight.Group
	mu       sync.RWMutex
	cache    map[uint64]cached // by proofHash
}

// cached is a proof STS verified: the exact proof (it is compared whole on
// a hit, so a hash collision is a miss, never another caller's identity),
// the vendor id it was checked for, who it proved, and until when.
type cached struct {
	proof  Proof
	vendor string
	c      Caller
	until  time.Time
}

// maxCached bounds the verified-proof cache (entries live ≤ MaxProofAge and
// hold their proof, a few KB).
const maxCached = 4096

// maxProofBytes bounds a proof's decoded parts.
const maxProofBytes = 16 << 10

// Bounds on a proof's headers: a SigV4-signed GetCallerIdentity has about
// seven; the session token is the longest value (a few KB at most).
const (
	maxHeaders     = 24
	maxHeaderName  = 64
	maxHeaderValue = 8 << 10
)

func (v *Verifier) init() {
	v.once.Do(func() {
		v.endpoint, _ = url.Parse(v.Endpoint)
		if v.HTTP == nil {
			v.HTTP = &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		}
		if v.Now == nil {
			v.Now = time.Now
		}
		v.cache = map[uint64]cached{}
	})
}

// parsed is a proof that passed the offline checks.
type parsed struct {
	body    []byte
	headers http.Header // only what is sent to STS
	signed  time.Time
}

func refuse(reason, format string, args ...any) Caller {
	return Caller{Path: PathInvoke, Problem: reason, Detail: fmt.Sprintf(format, args...)}
}

// vendorID is the vendor id proofs must name in this invocation.
func (v *Verifier) vendorID(ctx context.Context) string {
	if v.VendorID != "" {
		return v.VendorID
	}
	if lc, ok := lambdacontext.FromContext(ctx); ok {
		return unqualified(lc.InvokedFunctionArn)
	}
	return ""
}

// unqualified drops a version or alias from a full function ARN
// (arn:P:lambda:R:A:function:NAME[:Q]); anything else is returned as is.
func unqualified(arn string) string {
	n := 0
	for i := 0; i < len(arn); i++ {
		if arn[i] == ':' {
			if n++; n == 7 {
				return arn[:i]
			}
		}
	}
	return arn
}

// proofSeed keys proofHash; random per process, so no caller can aim for a
// collision (which would only cost a miss anyway).
var proofSeed = maphash.MakeSeed()

// proofHash is the cache slot of a proof as sent: the hot path (a proof
// seen before) costs this hash, a map read and a comparison, no parsing and
// no allocation.
func proofHash(p *Proof) uint64 {
	var h maphash.Hash
	h.SetSeed(proofSeed)
	for _, s := range [...]string{p.Method, p.URL, p.Body, p.Headers} {
		h.WriteString(s)
		h.WriteByte(0)
	}
	return h.Sum64()
}

// proofKey names one proof exactly, for joining concurrent verifications
// of it (only on a miss).
func proofKey(p *Proof, vendor string) string {
	h := sha256.New()
	for _, s := range [...]string{p.Method, p.URL, p.Body, p.Headers, vendor} {
		io.WriteString(h, s)
		h.Write([]byte{0})
	}
	return string(h.Sum(nil))
}

// Verify returns the caller p proves, or an unverified caller saying why not.
// A verified proof is remembered until it expires, so a caller reusing its
// proof costs one STS request per proof, not per vend.
func (v *Verifier) Verify(ctx context.Context, p *Proof) Caller {
	v.init()
	if p == nil {
		return Anonymous(PathInvoke, "direct invoke carries no identity proof (a signed sts:GetCallerIdentity request)")
	}
	vendor := v.vendorID(ctx)
	if v.endpoint == nil || v.endpoint.Host == "" || vendor == "" {
		return refuse(NoIdentity, "this vendor is not configured to verify identity proofs")
	}
	slot := proofHash(p)
	now := v.Now()
	v.mu.RLock()
	hit, ok := v.cache[slot]
	v.mu.RUnlock()
	if ok && hit.proof == *p && hit.vendor == vendor && now.Before(hit.until) {
		return hit.c
	}
	pp, bad := v.check(p, vendor, now)
	if bad != nil {
		return *bad
	}
	proof := *p
	ch := v.sf.DoChan(proofKey(p, vendor), func() (any, error) {
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
			v.cache[slot] = cached{proof: proof, vendor: vendor, c: c, until: pp.signed.Add(MaxProofAge)}
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

// check does everything that needs no network: shape, target, vendor, age,
// and the Authorization header, read as strictly as STS would read it so
// that the vendor and STS agree on what was signed.
func (v *Verifier) check(p *Proof, vendor string, now time.Time) (parsed, *Caller) {
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
	if len(hv) > maxHeaders {
		return fail(ProofMalformed, "identity proof: more than %d headers", maxHeaders)
	}
	// One value per header, whatever the case of its name: the vendor
	// checks the value STS will see.
	h := make(http.Header, len(hv))
	for k, val := range hv {
		if !headerName(k) {
			return fail(ProofMalformed, "identity proof: a header name is empty, longer than %d characters or not an HTTP token", maxHeaderName)
		}
		s, ok := val.(string)
		if a, isList := val.([]any); isList && len(a) == 1 {
			s, ok = a[0].(string)
		}
		if !ok {
			return fail(ProofMalformed, "identity proof: header %s must have one string value", http.CanonicalHeaderKey(k))
		}
		if !headerValue(s) {
			return fail(ProofMalformed, "identity proof: header %s has a value with control characters or non-ASCII bytes, or longer than %d bytes", http.CanonicalHeaderKey(k), maxHeaderValue)
		}
		ck := http.CanonicalHeaderKey(k)
		if _, dup := h[ck]; dup {
			return fail(ProofMalformed, "identity proof: header %s appears more than once", ck)
		}
		h[ck] = []string{s}
	}
	auth := h.Get("Authorization")
	if auth == "" {
		return fail(ProofMalformed, "identity proof: want one Authorization header (AWS4-HMAC-SHA256)")
	}
	a, why := parseAuthorization(auth)
	if why != "" {
		return fail(ProofMalformed, "identity proof: Authorization: %s", why)
	}
	if !slices.Contains(a.signed, "x-token-vendor-id") {
		return fail(ProofOtherVendor, "identity proof: %s is not among the signed headers, so the proof names no vendor", VendorHeader)
	}
	for _, need := range []string{"host", "x-amz-date"} {
		if !slices.Contains(a.signed, need) {
			return fail(ProofMalformed, "identity proof: %s is not among the signed headers", need)
		}
	}
	// What STS gets: the signed headers and the authorization headers.
	fwd := make(http.Header, len(a.signed)+2)
	for _, name := range a.signed {
		ck := http.CanonicalHeaderKey(name)
		vs, ok := h[ck]
		switch {
		case ck == "Host" || ck == "Content-Length":
			// Set by the vendor: Host is its STS endpoint's (checked
			// below when the proof carries it), the length its body's.
			continue
		case !ok:
			return fail(ProofMalformed, "identity proof: the signed header %s is not in iam_request_headers", ck)
		}
		fwd[ck] = vs
	}
	fwd["Authorization"] = h["Authorization"]
	if tok, ok := h["X-Amz-Security-Token"]; ok {
		fwd["X-Amz-Security-Token"] = tok
	}
	if vs := h.Values(VendorHeader); len(vs) != 1 || vs[0] != vendor {
		return fail(ProofOtherVendor, "identity proof: made for another vendor than %q", vendor)
	}
	if host := h.Get("Host"); host != "" && !strings.EqualFold(host, v.endpoint.Host) {
		return fail(ProofOtherHost, "identity proof: signed for another endpoint than this vendor's STS endpoint %s", v.endpoint.Host)
	}
	date := h.Get("X-Amz-Date")
	signed, err := time.Parse("20060102T150405Z", date)
	if err != nil {
		return fail(ProofMalformed, "identity proof: X-Amz-Date is missing or malformed")
	}
	if a.date != date[:8] {
		return fail(ProofMalformed, "identity proof: the credential scope's date is not X-Amz-Date's")
	}
	if now.Sub(signed) > MaxProofAge {
		return fail(ProofExpired, "identity proof: signed %s ago; a proof is valid for %s", now.Sub(signed).Round(time.Second), MaxProofAge)
	}
	if signed.Sub(now) > futureSkew {
		return fail(ProofExpired, "identity proof: dated %s in the future (clock skew)", signed.Sub(now).Round(time.Second))
	}
	return parsed{body: body, headers: fwd, signed: signed}, nil
}

// headerName reports whether s is an HTTP token (RFC 9110) of sane length.
func headerName(s string) bool {
	if s == "" || len(s) > maxHeaderName {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// headerValue reports whether s is printable ASCII (spaces and tabs
// allowed) of sane length: no CR, LF or other control character.
func headerValue(s string) bool {
	if len(s) > maxHeaderValue {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// authorization is a parsed SigV4 Authorization header.
type authorization struct {
	signed []string // signed header names
	date   string   // the credential scope's date, YYYYMMDD
}

// parseAuthorization reads "AWS4-HMAC-SHA256 Credential=AK/DATE/REGION/sts/aws4_request,
// SignedHeaders=a;b, Signature=hex": each field exactly once and nothing
// else, the signed header names lowercase, sorted and unique. why says what
// is wrong (never echoing the header).
func parseAuthorization(s string) (a authorization, why string) {
	rest, found := strings.CutPrefix(s, "AWS4-HMAC-SHA256 ")
	if !found {
		return a, "not a SigV4 (AWS4-HMAC-SHA256) signature"
	}
	var cred, signed, sig string
	var seen [3]bool
	for _, f := range strings.Split(rest, ",") {
		k, val, _ := strings.Cut(strings.TrimSpace(f), "=")
		var i int
		switch k {
		case "Credential":
			i, cred = 0, val
		case "SignedHeaders":
			i, signed = 1, val
		case "Signature":
			i, sig = 2, val
		default:
			return a, "want exactly Credential, SignedHeaders and Signature"
		}
		if seen[i] {
			return a, k + " appears more than once"
		}
		seen[i] = true
	}
	if !seen[0] || !seen[1] || !seen[2] {
		return a, "want exactly Credential, SignedHeaders and Signature"
	}
	scope := strings.Split(cred, "/")
	if len(scope) != 5 || scope[0] == "" || len(scope[1]) != 8 || scope[2] == "" || scope[3] != "sts" || scope[4] != "aws4_request" {
		return a, "the credential scope is not KEY/DATE/REGION/sts/aws4_request"
	}
	for _, part := range append(scope[:3:3], scope[1]) {
		if !headerName(part) {
			return a, "the credential scope is not KEY/DATE/REGION/sts/aws4_request"
		}
	}
	if len(sig) != 64 || strings.Trim(sig, "0123456789abcdef") != "" {
		return a, "the signature is not 64 lowercase hex digits"
	}
	a.signed, a.date = strings.Split(signed, ";"), scope[1]
	for i, name := range a.signed {
		if !headerName(name) || strings.ToLower(name) != name {
			return a, "a signed header name is empty, not lowercase or not an HTTP token"
		}
		if i > 0 && a.signed[i-1] >= name {
			return a, "the signed header names are not sorted and unique"
		}
	}
	return a, ""
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
	// VendorID, when set, is the vendor id proofs name (TOKEN_VENDOR_ID, for
	// a vendor given a VENDOR_ID). Otherwise it is FunctionARN(Function):
	// the ARN of the vend function invoked; for a bare function name the
	// account is the credentials' (asked of STS once when they do not say).
	VendorID string
	Function string
	HTTP     *http.Client // for that one STS request; a 5 s client when nil
	Now      func() time.Time

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
	if p.VendorID == "" {
		if p.VendorID, err = p.functionARN(ctx, creds, endpoint, now); err != nil {
			return nil, err
		}
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

// functionARN is the vendor id of p.Function.
func (p *Prover) functionARN(ctx context.Context, creds aws.Credentials, endpoint string, now time.Time) (string, error) {
	if arn := FunctionARN(p.Function, p.Region, creds.AccountID); arn != "" {
		return arn, nil
	}
	if FunctionARN(p.Function, p.Region, "000000000000") == "" {
		return "", fmt.Errorf("identity proof: %q is not a function name or ARN", p.Function)
	}
	account, err := CallerAccount(ctx, p.HTTP, creds, p.Region, endpoint, now)
	if err != nil {
		return "", fmt.Errorf("identity proof: the vend function %q is named without its account and the credentials' account could not be read (%w): name the function by its ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME) or set AWS_ACCOUNT_ID", p.Function, err)
	}
	return FunctionARN(p.Function, p.Region, account), nil
}

var (
	functionNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	regionRE       = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
)

// FunctionARN is the vendor id of a vend function: its unqualified ARN,
// arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME. function is a full ARN
// (its own region and account count), a partial one (ACCOUNT:function:NAME)
// or a bare NAME, each with an optional :QUALIFIER; what function lacks
// comes from region and account (a name alone is a function of the
// invoker's account and region, as Lambda reads it). "" when function is
// none of these, or when the account is needed and empty.
func FunctionARN(function, region, account string) string {
	parts := strings.Split(function, ":")
	var name string
	switch {
	case len(parts) >= 7 && len(parts) <= 8 && parts[0] == "arn" && parts[2] == "lambda" && parts[5] == "function":
		region, account, name = parts[3], parts[4], parts[6]
		if partition(region) != parts[1] {
			return ""
		}
	case (len(parts) == 3 || len(parts) == 4) && parts[1] == "function":
		account, name = parts[0], parts[2]
	case len(parts) <= 2:
		name = parts[0]
	default:
		return ""
	}
	if !functionNameRE.MatchString(name) || !regionRE.MatchString(region) || len(account) != 12 || strings.Trim(account, "0123456789") != "" {
		return ""
	}
	return "arn:" + partition(region) + ":lambda:" + region + ":" + account + ":function:" + name
}

// partition is the AWS partition of a region.
func partition(region string) string {
	switch {
	case strings.HasPrefix(region, "cn-"):
		return "aws-cn"
	case strings.HasPrefix(region, "us-gov-"):
		return "aws-us-gov"
	case strings.HasPrefix(region, "us-iso-"):
		return "aws-iso"
	case strings.HasPrefix(region, "us-isob-"):
		return "aws-iso-b"
	case strings.HasPrefix(region, "eu-isoe-"):
		return "aws-iso-e"
	case strings.HasPrefix(region, "us-isof-"):
		return "aws-iso-f"
	}
	return "aws"
}

// CallerAccount asks STS (GetCallerIdentity, which needs no permission)
// which account creds belong to.
func CallerAccount(ctx context.Context, hc *http.Client, creds aws.Credentials, region, endpoint string, now time.Time) (string, error) {
	if hc == nil {
		hc = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := signedRequest(ctx, creds, region, endpoint, "", now)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("sts:GetCallerIdentity: %w", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var a stsAnswer
	if resp.StatusCode != http.StatusOK || xml.Unmarshal(data, &a) != nil || principal.Account(a.Result.Arn) == "" {
		return "", fmt.Errorf("sts:GetCallerIdentity answered %d", resp.StatusCode)
	}
	return principal.Account(a.Result.Arn), nil
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
