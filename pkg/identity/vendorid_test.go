package identity

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"
)

func TestFunctionARN(t *testing.T) {
	for _, c := range []struct{ in, region, account, want string }{
		{"tv-VendFunction-abc", "us-east-1", "123456789012", "arn:aws:lambda:us-east-1:123456789012:function:tv-VendFunction-abc"},
		{"tv-VendFunction-abc:live", "us-east-1", "123456789012", "arn:aws:lambda:us-east-1:123456789012:function:tv-VendFunction-abc"},
		{"arn:aws:lambda:eu-west-1:210987654321:function:tv-Vend:3", "us-east-1", "123456789012", "arn:aws:lambda:eu-west-1:210987654321:function:tv-Vend"},
		{"210987654321:function:tv-Vend", "us-east-1", "", "arn:aws:lambda:us-east-1:210987654321:function:tv-Vend"},
		{"tv-Vend", "cn-north-1", "123456789012", "arn:aws-cn:lambda:cn-north-1:123456789012:function:tv-Vend"},
		{"tv-Vend", "us-gov-west-1", "123456789012", "arn:aws-us-gov:lambda:us-gov-west-1:123456789012:function:tv-Vend"},
		{"tv-Vend", "us-east-1", "", ""}, // a bare name needs the account
		{"tv Vend", "us-east-1", "123456789012", ""},
		{"arn:aws:s3:::bucket", "us-east-1", "123456789012", ""},
	} {
		if got := FunctionARN(c.in, c.region, c.account); got != c.want {
			t.Errorf("FunctionARN(%q, %q, %q) = %q, want %q", c.in, c.region, c.account, got, c.want)
		}
	}
}

// TestProverNamesTheFunctionsARN: a Prover told the function it invokes
// puts that function's ARN in X-Token-Vendor-Id; for a bare name, the
// account is the credentials' (asked of STS once when they do not say).
func TestProverNamesTheFunctionsARN(t *testing.T) {
	sts := newRecordingSTS(t)
	vendorOf := func(p *Proof) string {
		raw, _ := base64.StdEncoding.DecodeString(p.Headers)
		var h http.Header
		json.Unmarshal(raw, &h)
		return h.Get(VendorHeader)
	}
	for _, c := range []struct{ function, want string }{
		{"arn:aws:lambda:us-east-1:210987654321:function:tv-Vend:live", "arn:aws:lambda:us-east-1:210987654321:function:tv-Vend"},
		{"tv-Vend", "arn:aws:lambda:us-east-1:123456789012:function:tv-Vend"}, // okBody's account
	} {
		pr := &Prover{Credentials: staticCreds(testCreds), Region: "us-east-1", Endpoint: sts.URL, Function: c.function}
		for range 2 {
			p, err := pr.Proof(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := vendorOf(p); got != c.want {
				t.Errorf("%s: signed for %q, want %q", c.function, got, c.want)
			}
			pr.proof = nil // sign again: the account is looked up once
		}
	}
	if n := sts.calls.Load(); n != 1 {
		t.Fatalf("%d STS account lookups, want 1", n)
	}
	withAccount := testCreds
	withAccount.AccountID = "333333333333"
	pr := &Prover{Credentials: staticCreds(withAccount), Region: "us-east-1", Endpoint: sts.URL, Function: "tv-Vend"}
	p, err := pr.Proof(context.Background())
	if err != nil || vendorOf(p) != "arn:aws:lambda:us-east-1:333333333333:function:tv-Vend" || sts.calls.Load() != 1 {
		t.Fatalf("credentials that name their account: %v %q", err, vendorOf(p))
	}
}
