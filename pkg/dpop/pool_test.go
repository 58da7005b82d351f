package dpop

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/provider"
)

// memKMS signs like KMS (MessageType RAW, DER ECDSA) with an in-memory key
// and counts Sign calls.
type memKMS struct {
	key   *ecdsa.PrivateKey
	signs atomic.Int32
}

func (m *memKMS) Sign(_ context.Context, in *kms.SignInput, _ ...func(*kms.Options)) (*kms.SignOutput, error) {
	m.signs.Add(1)
	d := sha256.Sum256(in.Message)
	sig, err := ecdsa.SignASN1(rand.Reader, m.key, d[:])
	return &kms.SignOutput{Signature: sig, KeyId: in.KeyId}, err
}

func (m *memKMS) GetPublicKey(_ context.Context, in *kms.GetPublicKeyInput, _ ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error) {
	der, _ := x509.MarshalPKIXPublicKey(&m.key.PublicKey)
	return &kms.GetPublicKeyOutput{PublicKey: der, KeyId: aws.String("arn:aws:kms:eu-west-1:123456789012:key/k"), KeyUsage: kmstypes.KeyUsageTypeSignVerify}, nil
}

// A miss signs the proof and Ahead spares at once; the next requests for
// the target take the spares (no KMS call), each once; a new nonce drops
// them; old spares are not handed out; PEM keys are not pooled.
func TestPoolSignsAheadAndInvalidates(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	api := &memKMS{key: k}
	now := time.Unix(1_800_000_000, 0)
	pl := NewPool(New(assertion.New(api)).WithClock(func() time.Time { return now }))
	d := &provider.Definition{Name: "bank", TokenURL: "https://as.example/token", ClientID: "c", ClientSecret: "secret-1", DPoPKMSKeyID: "alias/dpop", DPoPSigningAlg: "ES256"}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r := Request{Method: "POST", Target: "https://rs.example/pay?x=1", AccessToken: "tok"}
	jtis := map[string]bool{}
	sign := func(r Request) (map[string]any, int32) {
		t.Helper()
		before := api.signs.Load()
		p, err := pl.Sign(ctx, d, r)
		if err != nil {
			t.Fatal(err)
		}
		c, _, _ := verify(t, p.JWT)
		if jtis[c["jti"].(string)] {
			t.Fatal("a pooled proof was handed out twice")
		}
		jtis[c["jti"].(string)] = true
		return c, api.signs.Load() - before
	}
	if _, n := sign(r); n != 4 || pl.Pooled() != 3 {
		t.Fatalf("a miss signed %d (pooled %d), want 4 (3 spares)", n, pl.Pooled())
	}
	for i := range 3 {
		if c, n := sign(r); n != 0 || c["htu"] != "https://rs.example/pay" || c["ath"] != ATH("tok") {
			t.Fatalf("spare %d: %d KMS calls, claims %v", i, n, c)
		}
	}
	if _, n := sign(r); n != 4 {
		t.Fatalf("an empty pool signed %d", n)
	}
	// The resource server demands a nonce: the spares without it are dropped.
	if c, n := sign(Request{Method: "POST", Target: r.Target, AccessToken: "tok", Nonce: "n2"}); n != 4 || c["nonce"] != "n2" {
		t.Fatalf("new nonce: %d calls, nonce %v", n, c["nonce"])
	}
	// Another token is another target.
	if c, n := sign(Request{Method: "POST", Target: r.Target, AccessToken: "tok2", Nonce: "n2"}); n != 4 || c["ath"] != ATH("tok2") {
		t.Fatalf("other token: %d calls", n)
	}
	// Spares older than MaxAge are not handed out.
	now = now.Add(pl.MaxAge)
	if _, n := sign(Request{Method: "POST", Target: r.Target, AccessToken: "tok", Nonce: "n2"}); n != 4 {
		t.Fatalf("stale spares used: %d calls", n)
	}
	// PEM keys sign in process, one proof per request.
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pemDef := def(t, pemOf(t, ec), "")
	before := pl.Pooled()
	if _, err := pl.Sign(ctx, pemDef, r); err != nil || pl.Pooled() != before {
		t.Fatalf("a PEM key was pooled: %v", err)
	}
}

// slowKMS is memKMS with a fixed round trip, as a real KMS call has
// (moto, CPU-bound and serial, cannot show what parallel signing saves).
type slowKMS struct {
	memKMS
	rtt time.Duration
}

func (s *slowKMS) Sign(ctx context.Context, in *kms.SignInput, o ...func(*kms.Options)) (*kms.SignOutput, error) {
	time.Sleep(s.rtt)
	return s.memKMS.Sign(ctx, in, o...)
}

// BenchmarkPoolLatencyBound: per-proof latency with a 5 ms KMS round trip,
// signing each proof versus the pool (one parallel round trip per 4).
func BenchmarkPoolLatencyBound(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p := New(assertion.New(&slowKMS{memKMS: memKMS{key: k}, rtt: 5 * time.Millisecond}))
	d := &provider.Definition{Name: "bank", TokenURL: "https://as.example/token", ClientID: "c", ClientSecret: "secret-1", DPoPKMSKeyID: "alias/dpop", DPoPSigningAlg: "ES256"}
	if err := d.Validate(); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	r := Request{Method: "GET", Target: "https://rs.example/a", AccessToken: "tok"}
	pool := NewPool(p)
	for name, sign := range map[string]func() error{
		"each":   func() error { _, err := p.Sign(ctx, d, r); return err },
		"pooled": func() error { _, err := pool.Sign(ctx, d, r); return err },
	} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if err := sign(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
