package lambdafn

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// eventSeeds are events in the shape callers send and near misses that
// must take the careful path (and get its answers).
var eventSeeds = []string{
	`{"provider":"demo-k2"}`,
	` {"provider":"demo-k2","scope":"read write","resource":"https://r","audience":"a","min_ttl":300} `,
	`{"provider":"demo-k2","min_ttl":-1}`,
	`{"provider":"demo-k2","min_ttl":0}`,
	`{"provider":"demo-k2","min_ttl":01}`,
	`{"provider":"demo-k2","min_ttl":1.5}`,
	`{"provider":"demo-k2","min_ttl":1e3}`,
	`{"provider":"demo-k2","min_ttl":null}`,
	`{"provider":"demo-k2","min_ttl":99999999999999999999}`,
	`{"provider":"demo-k2","min_ttl":"5"}`,
	`{"provider":"demo-k2","rejected_token_sha256":"` + strings.Repeat("a", 64) + `"}`,
	`{"provider":"demo-k2","dpop_htm":"GET","dpop_htu":"https://x/y","dpop_nonce":"n"}`,
	`{"provider":"demo-k2","dpop_htm":"GET","dpop_htu":"https://x/y","dpop_count":3}`,
	`{"provider":"demo-k2","dpop_count":-2}`,
	`{"provider":"demo-k2","dpop_count":2.0}`,
	`{"provider":"demo-k2","identity":{"iam_http_request_method":"POST","iam_request_url":"aHR0cHM6Ly9zdHMv","iam_request_body":"QQ==","iam_request_headers":"e30="}}`,
	`{"provider":"demo-k2","identity":{"iam_http_request_method":"POST"}}`,
	`{"provider":"demo-k2","identity":{}}`,
	`{"provider":"demo-k2","identity":null}`,
	`{"provider":"demo-k2","identity":{"iam_http_request_method":"POST","extra":1}}`,
	`{"provider":"demo-k2","identity":"x"}`,
	`{"Provider":"demo-k2"}`,
	`{"provider":"demo-k2","provider":"other"}`,
	`{"provider":"demo-k2","bogus":true}`,
	`{"provider":"d\u00e9mo"}`,
	`{"provider":"démo"}`,
	`{"provider":"demo\"k2"}`,
	`{"provider":5}`,
	`{"provider":null}`,
	`{}`,
	`[]`,
	`"x"`,
	`null`,
	`{"provider":"demo-k2"} {"provider":"x"}`,
	`{"provider":"demo-k2"}}`,
	`{"provider":"demo-k2",}`,
	`{"provider":"demo-k2"`,
	`{"provider" "demo-k2"}`,
	``,
	`nope`,
}

// oldDecode is what the handler did before InvokeFunc: lambda.NewHandler's
// decode into a json.RawMessage, then strictDecode.
func oldDecode(b []byte, ev *InvokeEvent) error {
	var rm json.RawMessage
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&rm); err != nil {
		return err
	}
	return strictDecode(rm, ev)
}

func checkFastDecode(t *testing.T, b []byte) {
	var fast, slow InvokeEvent
	if !fastDecode(b, &fast) {
		return
	}
	if err := oldDecode(b, &slow); err != nil {
		t.Fatalf("%q: read in one pass, but the careful path refuses it: %v", b, err)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("%q: one pass read %+v, the careful path %+v", b, fast, slow)
	}
}

// TestFastDecodeAgreesWithStrictDecode: whatever the one-pass reading
// accepts, the old two steps accept with the same event.
func TestFastDecodeAgreesWithStrictDecode(t *testing.T) {
	accepted := 0
	for _, s := range eventSeeds {
		checkFastDecode(t, []byte(s))
		if fastDecode([]byte(s), new(InvokeEvent)) {
			accepted++
		}
	}
	if accepted < 8 {
		t.Fatalf("the one-pass reading accepted only %d seeds; the hot path would not use it", accepted)
	}
	for _, s := range []string{`{"Provider":"x"}`, `{"provider":"x","provider":"y"}`, `{"provider":"x","min_ttl":null}`, `{"provider":"d\u00e9mo"}`, `{"provider":"x"} {}`} {
		if fastDecode([]byte(s), new(InvokeEvent)) {
			t.Errorf("%s read in one pass; it must take the careful path", s)
		}
	}
}

func FuzzFastDecode(f *testing.F) {
	for _, s := range eventSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkFastDecode(t, b) })
}

type recVendor struct{ reqs []vend.Request }

func (r *recVendor) Token(_ context.Context, req vend.Request) (vend.Token, error) {
	r.reqs = append(r.reqs, req)
	if req.Provider != "demo-k2" {
		return vend.Token{}, wire.Invalid("no such provider %q", req.Provider)
	}
	return vend.Token{Provider: req.Provider, AccessToken: "tok<&>", TokenType: "Bearer", Scope: req.Scope, ExpiresAt: time.Unix(2000, 0)}, nil
}

func (r *recVendor) Rejected(ctx context.Context, req vend.Request, _ string) (vend.Token, error) {
	return r.Token(ctx, req)
}

type recVerifier struct{ proofs []identity.Proof }

func (r *recVerifier) Verify(_ context.Context, p *identity.Proof) identity.Caller {
	r.proofs = append(r.proofs, *p)
	return identity.Anonymous(identity.PathInvoke, "test")
}

// TestInvokeFuncAsLambdaHandler: InvokeFunc as a lambda.Handler answers
// every payload exactly as lambda.NewHandler's reflective adapter of the
// same function did: same response bytes, same error (type and text), same
// request reaching the vendor and the same proof reaching the verifier.
func TestInvokeFuncAsLambdaHandler(t *testing.T) {
	for _, s := range eventSeeds {
		checkAdapters(t, []byte(s))
	}
}

func FuzzInvokeFuncAsLambdaHandler(f *testing.F) {
	for _, s := range eventSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(checkAdapters)
}

func checkAdapters(t *testing.T, b []byte) {
	now := func() time.Time { return time.Unix(1000, 0) }
	v1, v2 := &recVendor{}, &recVendor{}
	p1, p2 := &recVerifier{}, &recVerifier{}
	quiet := slog.New(slog.DiscardHandler)
	f1 := Invoke(v1, p1, quiet, now)
	old := lambda.NewHandler(func(ctx context.Context, raw json.RawMessage) (wire.TokenResponse, error) { return f1(ctx, raw) })
	got1, err1 := old.Invoke(context.Background(), b)
	got2, err2 := lambda.NewHandler(Invoke(v2, p2, quiet, now)).Invoke(context.Background(), b)
	if string(got1) != string(got2) {
		t.Fatalf("%q: adapter answered %s, InvokeFunc %s", b, got1, got2)
	}
	if (err1 == nil) != (err2 == nil) || (err1 != nil && (err1.Error() != err2.Error() || reflect.TypeOf(err1) != reflect.TypeOf(err2) || wire.ErrorType(err1) != wire.ErrorType(err2))) {
		t.Fatalf("%q: adapter erred %T %v, InvokeFunc %T %v", b, err1, err1, err2, err2)
	}
	if !reflect.DeepEqual(v1.reqs, v2.reqs) || !reflect.DeepEqual(p1.proofs, p2.proofs) {
		t.Fatalf("%q: adapter vended %+v (proofs %+v), InvokeFunc %+v (proofs %+v)", b, v1.reqs, p1.proofs, v2.reqs, p2.proofs)
	}
}

// TestPlainEveryByte: the eight-bytes-at-a-time check refuses exactly the
// bytes a one-pass string may not hold, at every position of a word and
// of the tail.
func TestPlainEveryByte(t *testing.T) {
	for c := range 256 {
		want := c >= 0x20 && c < 0x80 && c != '\\'
		for pos := range 19 {
			v := bytes.Repeat([]byte("A"), 19)
			v[pos] = byte(c)
			if got := plain(v); got != want {
				t.Fatalf("byte %#x at %d: plain = %v, want %v", c, pos, got, want)
			}
		}
	}
}
