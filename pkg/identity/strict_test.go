package identity

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
)

// recordingSTS answers GetCallerIdentity for any signature and keeps the
// headers of every request it got.
type recordingSTS struct {
	*httptest.Server
	mu    sync.Mutex
	calls atomic.Int64
	seen  []http.Header
}

func newRecordingSTS(t *testing.T) *recordingSTS {
	s := &recordingSTS{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		s.mu.Lock()
		s.seen = append(s.seen, r.Header.Clone())
		s.mu.Unlock()
		w.Write([]byte(okBody))
	}))
	t.Cleanup(s.Close)
	return s
}

func editProof(t *testing.T, p *Proof, f func(map[string]any)) *Proof {
	t.Helper()
	raw, _ := base64.StdEncoding.DecodeString(p.Headers)
	var h map[string]any
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	f(h)
	b, _ := json.Marshal(h)
	q := *p
	q.Headers = base64.StdEncoding.EncodeToString(b)
	return &q
}

func authHeader(h map[string]any) string { return h["Authorization"].([]any)[0].(string) }

// TestStrictAuthorization: the Authorization header holds Credential,
// SignedHeaders and Signature once each and nothing else, and the signed
// header names are lowercase, sorted, unique, with host, x-amz-date and
// x-token-vendor-id among them. Anything else is proof_malformed (or, for a
// missing vendor header, proof_for_another_vendor) and never reaches STS:
// the vendor and STS must read the same signed header list.
func TestStrictAuthorization(t *testing.T) {
	sts := newRecordingSTS(t)
	now := time.Now()
	v := &Verifier{Endpoint: sts.URL, VendorID: "tv", Now: func() time.Time { return now }}
	good, err := Sign(context.Background(), testCreds, "us-east-1", sts.URL, "tv", now)
	if err != nil {
		t.Fatal(err)
	}
	setAuth := func(f func(string) string) *Proof {
		return editProof(t, good, func(h map[string]any) { h["Authorization"] = []string{f(authHeader(h))} })
	}
	signedList := func(a string) string {
		i := strings.Index(a, "SignedHeaders=")
		return a[i+len("SignedHeaders=") : i+strings.Index(a[i:], ",")]
	}
	cases := []struct {
		name   string
		p      *Proof
		reason string
	}{
		{"duplicate SignedHeaders", setAuth(func(a string) string {
			return a + ", SignedHeaders=" + signedList(a)
		}), ProofMalformed},
		{"duplicate SignedHeaders, the second naming the vendor header", setAuth(func(a string) string {
			return strings.Replace(a, ";x-token-vendor-id", "", 1) + ", SignedHeaders=" + signedList(a)
		}), ProofMalformed},
		{"duplicate Credential", setAuth(func(a string) string {
			return a + ", Credential=AKIDOTHER/20200101/us-east-1/sts/aws4_request"
		}), ProofMalformed},
		{"duplicate Signature", setAuth(func(a string) string { return a + ", Signature=" + strings.Repeat("0", 64) }), ProofMalformed},
		{"unknown field", setAuth(func(a string) string { return a + ", Comment=hello" }), ProofMalformed},
		{"uppercase signed header", setAuth(func(a string) string { return strings.Replace(a, "host;", "Host;", 1) }), ProofMalformed},
		{"unsorted signed headers", setAuth(func(a string) string {
			return strings.Replace(a, signedList(a), "x-token-vendor-id;"+strings.Replace(signedList(a), ";x-token-vendor-id", "", 1), 1)
		}), ProofMalformed},
		{"repeated signed header", setAuth(func(a string) string { return strings.Replace(a, "host;", "host;host;", 1) }), ProofMalformed},
		{"empty signed header name", setAuth(func(a string) string { return strings.Replace(a, "host;", "host;;", 1) }), ProofMalformed},
		{"signature not hex", setAuth(func(a string) string { return a[:len(a)-4] + "zzzz" }), ProofMalformed},
		{"credential scope with extra parts", setAuth(func(a string) string {
			return strings.Replace(a, "/sts/aws4_request", "/x/sts/aws4_request", 1)
		}), ProofMalformed},
		{"x-amz-date not signed", setAuth(func(a string) string { return strings.Replace(a, ";x-amz-date", "", 1) }), ProofMalformed},
		{"host not signed", setAuth(func(a string) string { return strings.Replace(a, "host;", "", 1) }), ProofMalformed},
		{"a signed header the proof lacks", setAuth(func(a string) string {
			return strings.Replace(a, ";x-token-vendor-id", ";x-missing;x-token-vendor-id", 1)
		}), ProofMalformed},
		{"two Authorization headers by case", editProof(t, good, func(h map[string]any) { h["authorization"] = h["Authorization"] }), ProofMalformed},
	}
	for _, c := range cases {
		got := v.Verify(context.Background(), c.p)
		if got.Verified() || got.Problem != c.reason || got.Retryable {
			t.Errorf("%s: %+v, want %s", c.name, got, c.reason)
		}
		if strings.Contains(got.Detail, "Signature=") || strings.Contains(got.Detail, testCreds.AccessKeyID) {
			t.Errorf("%s: the refusal echoes the proof", c.name)
		}
	}
	if n := sts.calls.Load(); n != 0 {
		t.Fatalf("%d malformed proofs reached STS", n)
	}
	if c := v.Verify(context.Background(), good); !c.Verified() {
		t.Fatalf("the well-formed proof: %+v", c)
	}
}

// TestMalformedHeaderValues: a header name or value no HTTP request could
// carry (CR/LF, control characters, overlong, not ASCII) is the caller's
// mistake: proof_malformed, checked offline, never a retryable
// identity_unavailable and never an STS request.
func TestMalformedHeaderValues(t *testing.T) {
	sts := newRecordingSTS(t)
	now := time.Now()
	v := &Verifier{Endpoint: sts.URL, VendorID: "tv", Now: func() time.Time { return now }}
	good, _ := Sign(context.Background(), testCreds, "us-east-1", sts.URL, "tv", now)
	cases := map[string]func(map[string]any){
		"CRLF in a signed value":    func(h map[string]any) { h["Content-Type"] = []string{"text/plain\r\nX-Evil: 1"} },
		"LF in an unsigned value":   func(h map[string]any) { h["X-Note"] = "a\nb" },
		"NUL in a value":            func(h map[string]any) { h["Content-Type"] = "text/plain\x00" },
		"DEL in a value":            func(h map[string]any) { h["Content-Type"] = "text/plain\x7f" },
		"not ASCII":                 func(h map[string]any) { h["Content-Type"] = "text/plain; ü" },
		"space in a name":           func(h map[string]any) { h["Bad Name"] = "x" },
		"colon in a name":           func(h map[string]any) { h["X-A:b"] = "x" },
		"empty name":                func(h map[string]any) { h[""] = "x" },
		"overlong value":            func(h map[string]any) { h["X-Note"] = strings.Repeat("a", 9000) },
		"two values for one header": func(h map[string]any) { h["Content-Type"] = []string{"a", "b"} },
		"a number for a value":      func(h map[string]any) { h["Content-Type"] = 3 },
		"X-Amz-Date disagreeing with scope": func(h map[string]any) {
			h["X-Amz-Date"] = []string{now.UTC().AddDate(0, 0, -1).Add(time.Minute).Format("20060102T150405Z")}
		},
	}
	for name, edit := range cases {
		got := v.Verify(context.Background(), editProof(t, good, edit))
		if got.Verified() || got.Problem != ProofMalformed || got.Retryable {
			t.Errorf("%s: %+v, want %s, not retryable", name, got, ProofMalformed)
		}
	}
	if n := sts.calls.Load(); n != 0 {
		t.Fatalf("%d proofs with malformed headers reached STS", n)
	}
}

// TestOnlySignedHeadersForwarded: the vendor sends STS the signed headers
// and the authorization headers, nothing else the caller put in the proof.
func TestOnlySignedHeadersForwarded(t *testing.T) {
	sts := newRecordingSTS(t)
	v := &Verifier{Endpoint: sts.URL, VendorID: "tv"}
	good, _ := Sign(context.Background(), testCreds, "us-east-1", sts.URL, "tv", time.Now())
	p := editProof(t, good, func(h map[string]any) {
		h["X-Forwarded-For"] = "10.0.0.1"
		h["X-Amz-Target"] = "AWSSecurityTokenServiceV20110615.AssumeRole"
		h["Cookie"] = "a=b"
	})
	if c := v.Verify(context.Background(), p); !c.Verified() {
		t.Fatalf("%+v", c)
	}
	if len(sts.seen) != 1 {
		t.Fatalf("%d STS requests", len(sts.seen))
	}
	got := sts.seen[0]
	for _, k := range []string{"X-Forwarded-For", "X-Amz-Target", "Cookie"} {
		if got.Get(k) != "" {
			t.Errorf("the unsigned header %s was forwarded to STS", k)
		}
	}
	for _, k := range []string{"Authorization", "X-Amz-Date", "X-Amz-Security-Token", VendorHeader, "Content-Type"} {
		if got.Get(k) == "" {
			t.Errorf("%s was not forwarded to STS", k)
		}
	}
}

// TestVendorIDIsTheInvokedFunctionsARN: with no VENDOR_ID override, a
// proof must name the ARN of the function being invoked (account, region
// and name, from the invocation's context): a proof made for a function of
// the same name in another account or region, or naming the bare function
// name, is for another vendor.
func TestVendorIDIsTheInvokedFunctionsARN(t *testing.T) {
	sts := newRecordingSTS(t)
	now := time.Now()
	v := &Verifier{Endpoint: sts.URL, Now: func() time.Time { return now }}
	const self = "arn:aws:lambda:eu-west-1:111111111111:function:tv-VendFunction-X"
	ctx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{InvokedFunctionArn: self + ":live"})
	sign := func(vendor string) *Proof {
		p, err := Sign(context.Background(), testCreds, "eu-west-1", sts.URL, vendor, now)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, other := range []string{
		"arn:aws:lambda:eu-west-1:222222222222:function:tv-VendFunction-X",
		"arn:aws:lambda:us-east-1:111111111111:function:tv-VendFunction-X",
		"tv-VendFunction-X",
	} {
		if c := v.Verify(ctx, sign(other)); c.Problem != ProofOtherVendor {
			t.Errorf("a proof for %s: %+v", other, c)
		}
	}
	if c := v.Verify(ctx, sign(self)); !c.Verified() {
		t.Fatalf("a proof for this function's ARN: %+v", c)
	}
	if c := v.Verify(context.Background(), sign(self)); c.Verified() || c.Problem != NoIdentity {
		t.Fatalf("outside an invocation, with no vendor id configured: %+v", c)
	}
	if n := sts.calls.Load(); n != 1 {
		t.Fatalf("%d STS calls", n)
	}
}

func staticCreds(c aws.Credentials) aws.CredentialsProvider {
	return aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) { return c, nil })
}

// TestCacheServesOnlyTheSameProof: the verified-proof cache answers only
// for the very bytes STS verified, for the vendor id they were checked
// against; any other proof is checked again in full.
func TestCacheServesOnlyTheSameProof(t *testing.T) {
	sts := newRecordingSTS(t)
	now := time.Now()
	v := &Verifier{Endpoint: sts.URL, Now: func() time.Time { return now }}
	const self = "arn:aws:lambda:us-east-1:111111111111:function:tv-Vend"
	ctx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{InvokedFunctionArn: self})
	p, _ := Sign(context.Background(), testCreds, "us-east-1", sts.URL, self, now)
	for range 3 {
		if c := v.Verify(ctx, p); !c.Verified() {
			t.Fatalf("%+v", c)
		}
	}
	if sts.calls.Load() != 1 {
		t.Fatalf("%d STS calls for one proof", sts.calls.Load())
	}
	// The same signed request with other bytes: checked and sent again.
	if c := v.Verify(ctx, editProof(t, p, func(h map[string]any) { h["X-Note"] = "x" })); !c.Verified() || sts.calls.Load() != 2 {
		t.Fatalf("an altered proof served from the cache: %+v, %d STS calls", c, sts.calls.Load())
	}
	// The same proof in another function's invocation is for another vendor.
	other := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{InvokedFunctionArn: "arn:aws:lambda:us-east-1:222222222222:function:tv-Vend"})
	if c := v.Verify(other, p); c.Problem != ProofOtherVendor {
		t.Fatalf("a cached proof served to another vendor id: %+v", c)
	}
}
