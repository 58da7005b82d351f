package identity

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

var testCreds = aws.Credentials{AccessKeyID: "ASIATESTTESTTEST", SecretAccessKey: "secret-key-never-logged", SessionToken: "session-token-never-logged"}

// fakeSTS answers GetCallerIdentity for any signature and counts calls; the
// real signature checks are tests/authz's, against moto.
func fakeSTS(t *testing.T, status int, body string) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if r.Header.Get(VendorHeader) == "" || !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
			t.Errorf("the proof's headers were not forwarded")
		}
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

const okBody = `<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:sts::123456789012:assumed-role/app/s</Arn><Account>123456789012</Account></GetCallerIdentityResult></GetCallerIdentityResponse>`

func TestVerifyCachesUntilTheProofExpires(t *testing.T) {
	srv, calls := fakeSTS(t, 200, okBody)
	now := time.Now()
	v := &Verifier{Endpoint: srv.URL, VendorID: "tv", Now: func() time.Time { return now }}
	p, err := Sign(context.Background(), testCreds, "us-east-1", srv.URL, "tv", now)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if c := v.Verify(context.Background(), p); c.ARN != "arn:aws:sts::123456789012:assumed-role/app/s" || c.Account != "123456789012" {
			t.Fatalf("%+v", c)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("%d STS calls for one proof", calls.Load())
	}
	now = now.Add(MaxProofAge + time.Second)
	if c := v.Verify(context.Background(), p); c.Problem != ProofExpired || calls.Load() != 1 {
		t.Fatalf("an expired proof served from the cache: %+v", c)
	}
}

func TestVerifyRefusals(t *testing.T) {
	srv, calls := fakeSTS(t, 403, `<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>x</Message></Error></ErrorResponse>`)
	now := time.Now()
	v := &Verifier{Endpoint: srv.URL, VendorID: "tv", Now: func() time.Time { return now }}
	sign := func(endpoint, vendor string, at time.Time) *Proof {
		p, err := Sign(context.Background(), testCreds, "us-east-1", endpoint, vendor, at)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	edit := func(p *Proof, f func(map[string][]string)) *Proof {
		raw, _ := base64.StdEncoding.DecodeString(p.Headers)
		var h map[string][]string
		json.Unmarshal(raw, &h)
		f(h)
		b, _ := json.Marshal(h)
		q := *p
		q.Headers = base64.StdEncoding.EncodeToString(b)
		return &q
	}
	good := sign(srv.URL, "tv", now)
	badBody := *good
	badBody.Body = base64.StdEncoding.EncodeToString([]byte("Action=AssumeRole&Version=2011-06-15"))
	cases := []struct {
		name   string
		p      *Proof
		reason string
	}{
		{"none", nil, NoIdentity},
		{"expired", sign(srv.URL, "tv", now.Add(-MaxProofAge-time.Second)), ProofExpired},
		{"future", sign(srv.URL, "tv", now.Add(2*time.Minute)), ProofExpired},
		{"other vendor", sign(srv.URL, "vault", now), ProofOtherVendor},
		{"vendor header not signed", edit(good, func(h map[string][]string) {
			h["Authorization"][0] = strings.Replace(h["Authorization"][0], ";x-token-vendor-id", "", 1)
		}), ProofOtherVendor},
		{"other host", sign("https://sts.example.net", "tv", now), ProofOtherHost},
		{"host header moved", edit(good, func(h map[string][]string) { h["Host"] = []string{"evil.example"} }), ProofOtherHost},
		{"another action", &badBody, ProofMalformed},
		{"GET", &Proof{Method: "GET", URL: good.URL, Body: good.Body, Headers: good.Headers}, ProofMalformed},
		{"not base64", &Proof{Method: "POST", URL: "!!", Body: good.Body, Headers: good.Headers}, ProofMalformed},
		{"signature refused by STS", good, SignatureRejected},
	}
	for _, c := range cases {
		got := v.Verify(context.Background(), c.p)
		if got.Verified() || got.Problem != c.reason {
			t.Errorf("%s: %+v, want %s", c.name, got, c.reason)
		}
		for _, s := range []string{testCreds.SessionToken, testCreds.AccessKeyID, "Signature="} {
			if strings.Contains(got.Detail, s) {
				t.Errorf("%s: the refusal echoes the proof (%s)", c.name, s)
			}
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("%d STS calls: only the proof that passed every offline check may reach STS", calls.Load())
	}
}

func TestVerifySTSDown(t *testing.T) {
	srv, _ := fakeSTS(t, 503, "busy")
	v := &Verifier{Endpoint: srv.URL, VendorID: "tv"}
	p, _ := Sign(context.Background(), testCreds, "us-east-1", srv.URL, "tv", time.Now())
	if c := v.Verify(context.Background(), p); c.Problem != STSUnavailable || !c.Retryable {
		t.Fatalf("%+v", c)
	}
	srv.Close()
	if c := v.Verify(context.Background(), p); c.Problem != STSUnavailable || !c.Retryable {
		t.Fatalf("unreachable: %+v", c)
	}
}

func TestProverReusesProofs(t *testing.T) {
	now := time.Now()
	var retrieved int
	pr := &Prover{Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		retrieved++
		return testCreds, nil
	}), Region: "eu-west-1", VendorID: "tv", Now: func() time.Time { return now }}
	a, _ := pr.Proof(context.Background())
	b, _ := pr.Proof(context.Background())
	if a != b || retrieved != 1 {
		t.Fatal("a proof is reused while fresh")
	}
	raw, _ := base64.StdEncoding.DecodeString(a.URL)
	if string(raw) != "https://sts.eu-west-1.amazonaws.com/" {
		t.Fatalf("signed for %s", raw)
	}
	now = now.Add(proofReuse)
	if c, _ := pr.Proof(context.Background()); c == a {
		t.Fatal("a proof is reused past its reuse window")
	}
}

// FuzzProof: whatever a caller sends as a proof, verification never panics,
// never reaches STS unless every offline check passed, and never echoes it.
func FuzzProof(f *testing.F) {
	p, _ := Sign(context.Background(), testCreds, "us-east-1", "http://127.0.0.1:1", "tv", time.Now())
	f.Add(p.Method, p.URL, p.Body, p.Headers)
	f.Add("POST", "", "", "e30=")
	f.Fuzz(func(t *testing.T, method, u, body, headers string) {
		var calls atomic.Int64
		v := &Verifier{Endpoint: "http://127.0.0.1:1", VendorID: "tv",
			HTTP: &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) {
				calls.Add(1)
				return nil, http.ErrHandlerTimeout
			})}}
		c := v.Verify(context.Background(), &Proof{Method: method, URL: u, Body: body, Headers: headers})
		if c.Verified() {
			t.Fatal("verified without STS")
		}
		if len(headers) > 20 && strings.Contains(c.Detail, headers) {
			t.Fatal("the refusal echoes the proof")
		}
		if calls.Load() > 0 && c.Problem != STSUnavailable {
			t.Fatalf("reached STS but reported %s", c.Problem)
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
