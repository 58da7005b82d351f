package main

// What private_key_jwt adds to an upstream fetch: signing the client
// assertion, with a PEM key in process or with a key that stays in KMS
// (through moto here, so the KMS figures are moto's, not AWS's).

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/webidentity"
	"github.com/token-vendor/token-vendor/tests/ststandin"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func signingBench(r *report) error {
	ctx := context.Background()
	moto, err := testenv.MotoEndpoint()
	if err != nil {
		return err
	}
	api := kms.NewFromConfig(testenv.Config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(moto) })
	keys := assertion.New(api)
	pemOf := func(k crypto.Signer) string {
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	kmsKey := func(spec kmstypes.KeySpec) (string, error) {
		out, err := api.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: spec, KeyUsage: kmstypes.KeyUsageTypeSignVerify})
		if err != nil {
			return "", err
		}
		return aws.ToString(out.KeyMetadata.KeyId), nil
	}
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kmsRSA, err := kmsKey(kmstypes.KeySpecRsa2048)
	if err != nil {
		return err
	}
	kmsEC, err := kmsKey(kmstypes.KeySpecEccNistP256)
	if err != nil {
		return err
	}
	n := 2000
	if r.quick {
		n = 200
	}
	// aws_web_identity: the assertion is an AWS-issued JWT, from STS (here the
	// stand-in for GetWebIdentityToken on loopback), reused while valid.
	standin, err := ststandin.Start("arn:aws:iam::123456789012:role/token-vendor-VendFunctionRole")
	if err != nil {
		return err
	}
	defer standin.Close()
	stsc := sts.NewFromConfig(testenv.Config(), func(o *sts.Options) { o.BaseEndpoint = aws.String(standin.URL) })
	wi := &provider.Definition{Name: "entra", ClientID: "app", TokenURL: "https://login.example/token", AuthMethod: provider.AuthAWSWebIdentity}
	if err := wi.Validate(); err != nil {
		return err
	}
	cachedWI := webidentity.New(stsc)
	for _, c := range []struct {
		name string
		f    func() error
	}{
		{"aws_web_identity: GetWebIdentityToken through the STS stand-in (loopback), per fetch", func() error {
			_, err := webidentity.New(stsc).Token(ctx, wi)
			return err
		}},
		{"aws_web_identity: the JWT reused while valid", func() error {
			_, err := cachedWI.Token(ctx, wi)
			return err
		}},
	} {
		row, err := measure(c.name, n/4, c.f)
		if err != nil {
			return err
		}
		r.signing = append(r.signing, row)
	}
	for _, c := range []struct {
		name string
		set  func(*provider.Definition)
		n    int
	}{
		{"PEM RSA 2048, RS256 (in process)", func(d *provider.Definition) { d.PrivateKey = pemOf(rsaKey) }, n},
		{"PEM EC P-256, ES256 (in process)", func(d *provider.Definition) { d.PrivateKey = pemOf(ecKey) }, n},
		{"KMS RSA 2048, RS256 (moto on loopback)", func(d *provider.Definition) { d.KMSKeyID = kmsRSA }, n / 4},
		{"KMS ECC P-256, ES256 (moto on loopback)", func(d *provider.Definition) { d.KMSKeyID = kmsEC }, n / 4},
	} {
		d := &provider.Definition{Name: "okta", ClientID: "0oa-client", TokenURL: "https://idp.example/token", AuthMethod: provider.AuthPrivateKeyJWT}
		c.set(d)
		row, err := measure(c.name, c.n, func() error {
			_, err := keys.Assertion(ctx, d, d.TokenURL)
			return err
		})
		if err != nil {
			return err
		}
		r.signing = append(r.signing, row)
	}
	return nil
}

func (r *report) writeSigning(w func(string, ...any)) {
	if len(r.signing) == 0 {
		return
	}
	w("")
	w("## 9. What client assertions add to a fetch")
	w("")
	w("Signing one client assertion (RFC 7523: header, claims, signature), which every upstream attempt of a private_key_jwt provider does once. The KMS rows go through moto on loopback, so they show the vendor's side (SDK, signing request) and moto's, not AWS KMS's: a real kms:Sign adds a regional round trip, typically a few to tens of milliseconds. The aws_web_identity rows get the vendor's AWS-issued JWT from a stand-in for STS GetWebIdentityToken on loopback (moto lacks the operation), so they show the vendor's side (SDK request, XML answer) and not AWS STS's latency; the JWT is then reused while it has more than 30 s left. A fetch happens once per key per refresh, fleet-wide, so this is not on the path of cached vends.")
	w("")
	latencyTable(w, "key", r.signing)
}

// latencyTable renders rows measured by measure, first column named first.
func latencyTable(w func(string, ...any), first string, rows []latencyRow) {
	w("| %s | n | p50 | p99 | max |", first)
	w("| --- | ---: | ---: | ---: | ---: |")
	for _, l := range rows {
		w("| %s | %d | %s | %s | %s |", l.Name, l.N, us(l.P50), us(l.P99), us(l.Max))
	}
}
