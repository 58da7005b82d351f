package identity

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// BenchmarkVerifyCached is the verifier's part of a vend whose proof was
// verified before (a Lambda consumer's proof: with a session token).
func BenchmarkVerifyCached(b *testing.B) {
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(okBody)) }))
	defer sts.Close()
	const vendor = "arn:aws:lambda:us-east-1:123456789012:function:tv-VendFunction-X"
	creds := testCreds
	creds.SessionToken = strings.Repeat("IQoJb3JpZ2luX2VjE", 50) // about the length of a Lambda role's
	p, err := Sign(context.Background(), creds, "us-east-1", sts.URL, vendor, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	v := &Verifier{Endpoint: sts.URL, VendorID: vendor}
	ctx := context.Background()
	if !v.Verify(ctx, p).Verified() {
		b.Fatal("not verified")
	}
	b.ReportAllocs()
	for b.Loop() {
		if !v.Verify(ctx, p).Verified() {
			b.Fatal("not verified")
		}
	}
}
