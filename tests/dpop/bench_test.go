package dpop

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// BenchmarkProof is what the vendor spends signing one consumer proof
// (per resource request): a PEM key signs in process; a KMS key costs a
// KMS Sign round trip (here moto on loopback, so the figure is a floor:
// real KMS adds a network round trip, typically milliseconds).
func BenchmarkProof(b *testing.B) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	pemOf := func(k any) string {
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	cases := []struct {
		name string
		set  func(b *testing.B, d *provider.Definition, api *kms.Client)
	}{
		{"pem-es256", func(_ *testing.B, d *provider.Definition, _ *kms.Client) { d.DPoPPrivateKey = pemOf(ec) }},
		{"pem-ps256", func(_ *testing.B, d *provider.Definition, _ *kms.Client) { d.DPoPPrivateKey = pemOf(rk) }},
		{"kms-es256", func(b *testing.B, d *provider.Definition, api *kms.Client) {
			d.DPoPKMSKeyID = kmsKey(b, api, kmstypes.KeySpecEccNistP256)
		}},
		{"kms-rs256", func(b *testing.B, d *provider.Definition, api *kms.Client) {
			d.DPoPKMSKeyID, d.DPoPSigningAlg = kmsKey(b, api, kmstypes.KeySpecRsa2048), "RS256"
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var api *kms.Client
			if c.name[:3] == "kms" {
				api = kms.NewFromConfig(testenv.Config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(testenv.Moto(b)) })
			}
			d := &provider.Definition{Name: "p", TokenURL: "https://as.example/token", ClientID: "c", ClientSecret: "secret-1"}
			c.set(b, d, api)
			if err := d.Validate(); err != nil {
				b.Fatal(err)
			}
			var keys *assertion.Keys
			if api != nil {
				keys = assertion.New(api)
			} else {
				keys = assertion.New(nil)
			}
			p := dpop.New(keys)
			ctx := context.Background()
			r := dpop.Request{Method: "GET", Target: "https://rs.example/accounts", AccessToken: "tok"}
			if _, err := p.Sign(ctx, d, r); err != nil { // the public key resolved once, as in a warm instance
				b.Fatal(err)
			}
			run := func(b *testing.B, sign func() error) {
				b.ReportAllocs()
				for b.Loop() {
					if err := sign(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.Run("each", func(b *testing.B) {
				run(b, func() error { _, err := p.Sign(ctx, d, r); return err })
			})
			// The vend path's pool (KMS keys only): one miss signs 4 in
			// parallel, the next 3 requests take spares.
			pool := dpop.NewPool(p)
			b.Run("pooled", func(b *testing.B) {
				run(b, func() error { _, err := pool.Sign(ctx, d, r); return err })
			})
		})
	}
}

func kmsKey(b *testing.B, api *kms.Client, spec kmstypes.KeySpec) string {
	out, err := api.CreateKey(context.Background(), &kms.CreateKeyInput{KeySpec: spec, KeyUsage: kmstypes.KeyUsageTypeSignVerify})
	if err != nil {
		b.Fatal(err)
	}
	return aws.ToString(out.KeyMetadata.KeyId)
}
