package assertion_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/tests/faultproxy"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func pemOf(t *testing.T, k crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func def(extra func(*provider.Definition)) *provider.Definition {
	d := &provider.Definition{Name: "okta", TokenURL: "https://idp.example/oauth2/v1/token", ClientID: "0oa-client", AuthMethod: provider.AuthPrivateKeyJWT}
	extra(d)
	return d
}

// verify checks an assertion against the JWK Set the vendor prints for
// registration, as the server would, and returns its claims and kid.
func verify(t *testing.T, keys *assertion.Keys, d *provider.Definition, signed string) (jwt.Token, string) {
	t.Helper()
	raw, err := keys.JWKS(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	set, err := jwk.Parse(raw)
	if err != nil {
		t.Fatalf("JWKS %s: %v", raw, err)
	}
	tok, err := jwt.Parse([]byte(signed), jwt.WithKeySet(set), jwt.WithValidate(true))
	if err != nil {
		t.Fatalf("assertion does not verify against the printed JWKS: %v", err)
	}
	msg, _ := jws.Parse([]byte(signed))
	kid, _ := msg.Signatures()[0].ProtectedHeaders().KeyID()
	return tok, kid
}

func checkClaims(t *testing.T, tok jwt.Token, d *provider.Definition, aud string) {
	t.Helper()
	iss, _ := tok.Issuer()
	sub, _ := tok.Subject()
	auds, _ := tok.Audience()
	jti, _ := tok.JwtID()
	iat, _ := tok.IssuedAt()
	exp, _ := tok.Expiration()
	if iss != d.ClientID || sub != d.ClientID || len(auds) != 1 || auds[0] != aud || len(jti) < 16 {
		t.Fatalf("claims iss=%q sub=%q aud=%v jti=%q", iss, sub, auds, jti)
	}
	if life := exp.Sub(iat); life <= 0 || life > 5*time.Minute {
		t.Fatalf("assertion lives %v; at most 5 minutes", life)
	}
}

func TestPEMKeysSignVerifiableAssertions(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cases := []struct {
		name string
		key  crypto.Signer
		alg  string
		want jwa.SignatureAlgorithm
	}{
		{"RSA default", rsaKey, "", jwa.RS256()},
		{"RSA PS256", rsaKey, "PS256", jwa.PS256()},
		{"EC P-256", ecKey, "", jwa.ES256()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			keys := assertion.New(nil)
			d := def(func(d *provider.Definition) { d.PrivateKey, d.SigningAlg = pemOf(t, c.key), c.alg })
			a, err := keys.Assertion(context.Background(), d, d.TokenURL)
			if err != nil {
				t.Fatal(err)
			}
			tok, kid := verify(t, keys, d, a)
			checkClaims(t, tok, d, d.TokenURL)
			pub, _ := jwk.Import(c.key.Public())
			tp, _ := pub.Thumbprint(crypto.SHA256)
			if kid == "" || !strings.HasPrefix(strings.TrimRight(kid, "="), base64.RawURLEncoding.EncodeToString(tp)) {
				t.Fatalf("kid %q is not the RFC 7638 thumbprint", kid)
			}
			msg, _ := jws.Parse([]byte(a))
			if alg, _ := msg.Signatures()[0].ProtectedHeaders().Algorithm(); alg != c.want {
				t.Fatalf("alg %v, want %v", alg, c.want)
			}
			b, _ := keys.Assertion(context.Background(), d, d.TokenURL)
			tb, _ := verify(t, keys, d, b)
			j1, _ := tok.JwtID()
			j2, _ := tb.JwtID()
			if j1 == j2 {
				t.Fatal("two assertions share a jti")
			}
		})
	}
}

func TestConfiguredKidAndAudience(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keys := assertion.New(nil)
	d := def(func(d *provider.Definition) {
		d.PrivateKey, d.KeyID, d.AssertionAudience = pemOf(t, k), "2026-key", "https://idp.example/oauth2/default"
	})
	a, err := keys.Assertion(context.Background(), d, "")
	if err != nil {
		t.Fatal(err)
	}
	tok, kid := verify(t, keys, d, a)
	checkClaims(t, tok, d, "https://idp.example/oauth2/default")
	// A revocation names its endpoint, whatever assertion_audience says.
	r, err := keys.Assertion(context.Background(), d, "https://revoke.example/revoke")
	if err != nil {
		t.Fatal(err)
	}
	rt, _ := verify(t, keys, d, r)
	checkClaims(t, rt, d, "https://revoke.example/revoke")
	// Valid from before now: a server whose clock is behind accepts it.
	nbf, _ := rt.NotBefore()
	if time.Until(nbf) > -assertion.ClockAllowance+time.Second {
		t.Fatalf("nbf %v leaves no allowance for a server clock behind ours", time.Until(nbf))
	}
	if kid != "2026-key" {
		t.Fatalf("kid %q", kid)
	}
}

func TestBadKeysArePermanentAndQuietErrors(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	secretPEM := pemOf(t, ecKey)
	for name, d := range map[string]*provider.Definition{
		"alg does not fit the key": def(func(d *provider.Definition) { d.PrivateKey, d.SigningAlg = secretPEM, "RS256" }),
		"garbled PEM":              def(func(d *provider.Definition) { d.PrivateKey = strings.Replace(secretPEM, "M", "!", 3) }),
		"KMS key without KMS":      def(func(d *provider.Definition) { d.KMSKeyID = "alias/signing" }),
	} {
		_, err := assertion.New(nil).Assertion(context.Background(), d, d.TokenURL)
		re, ok := upstream.AsRetrieveError(err)
		if !ok || re.Kind != upstream.Permanent || strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), secretPEM[40:80]) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// KMS signing through moto: RSA (RS256, PS256) and ECC P-256 keys whose
// private half never leaves KMS; throttling is transient, a key that
// cannot sign is permanent.
func TestKMSKeysSignThroughMoto(t *testing.T) {
	api, px := proxiedKMS(t)
	ctx := context.Background()
	mk := func(spec kmstypes.KeySpec, usage kmstypes.KeyUsageType) string {
		out, err := api.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: spec, KeyUsage: usage})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.KeyMetadata.KeyId)
	}
	for _, c := range []struct {
		name string
		spec kmstypes.KeySpec
		alg  string
	}{
		{"RSA RS256", kmstypes.KeySpecRsa2048, ""},
		{"RSA PS256", kmstypes.KeySpecRsa2048, "PS256"},
		{"ECC P-256", kmstypes.KeySpecEccNistP256, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			keys := assertion.New(api)
			d := def(func(d *provider.Definition) {
				d.KMSKeyID, d.SigningAlg = mk(c.spec, kmstypes.KeyUsageTypeSignVerify), c.alg
			})
			a, err := keys.Assertion(ctx, d, d.TokenURL)
			if err != nil {
				t.Fatal(err)
			}
			if c.alg == "PS256" {
				// moto 5.2 signs PSS with the maximal salt; real KMS uses the
				// 32-byte salt JWS requires (RFC 7518 §3.5), which jwx insists
				// on. Check the PSS signature with any salt, and the claims.
				checkClaims(t, verifyPSSAnySalt(t, keys, d, a), d, d.TokenURL)
				return
			}
			tok, _ := verify(t, keys, d, a)
			checkClaims(t, tok, d, d.TokenURL)
		})
	}
	keys := assertion.New(api)
	d := def(func(d *provider.Definition) {
		d.KMSKeyID = mk(kmstypes.KeySpecEccNistP256, kmstypes.KeyUsageTypeSignVerify)
	})
	if _, err := keys.Assertion(ctx, d, d.TokenURL); err != nil {
		t.Fatal(err)
	}
	px.Add(&faultproxy.Rule{Operation: "Sign", Action: faultproxy.Throttle})
	_, err := keys.Assertion(ctx, d, d.TokenURL)
	if re, ok := upstream.AsRetrieveError(err); !ok || re.Kind != upstream.Transient {
		t.Fatalf("throttled KMS: want a transient error, got %v", err)
	}
	px.Clear()
	enc := def(func(d *provider.Definition) {
		d.KMSKeyID = mk(kmstypes.KeySpecSymmetricDefault, kmstypes.KeyUsageTypeEncryptDecrypt)
	})
	_, err = assertion.New(api).Assertion(ctx, enc, enc.TokenURL)
	if re, ok := upstream.AsRetrieveError(err); !ok || re.Kind != upstream.Permanent {
		t.Fatalf("a key that cannot sign: want a permanent error, got %v", err)
	}
}

func verifyPSSAnySalt(t *testing.T, keys *assertion.Keys, d *provider.Definition, signed string) jwt.Token {
	t.Helper()
	raw, _ := keys.JWKS(context.Background(), d)
	set, _ := jwk.Parse(raw)
	k, _ := set.Key(0)
	var pub rsa.PublicKey
	if err := jwk.Export(k, &pub); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(signed, ".")
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPSS(&pub, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}); err != nil {
		t.Fatalf("PSS signature: %v", err)
	}
	tok, err := jwt.Parse([]byte(signed), jwt.WithVerify(false), jwt.WithValidate(true))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A throttled KMS is a transient failure like a 5xx: the first fetch opens
// the fleet-wide cooldown, and the other callers on every instance are
// answered 503 without asking KMS again.
func TestThrottledKMSDoesNotStampede(t *testing.T) {
	api, px := proxiedKMS(t)
	ctx := context.Background()
	key, err := api.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: kmstypes.KeySpecEccNistP256, KeyUsage: kmstypes.KeyUsageTypeSignVerify})
	if err != nil {
		t.Fatal(err)
	}
	d := def(func(d *provider.Definition) {
		d.KMSKeyID = aws.ToString(key.KeyMetadata.KeyId)
		d.TokenURL = "http://127.0.0.1:9/token"
	})
	px.Add(&faultproxy.Rule{Operation: "Sign", Action: faultproxy.Throttle})
	st := store.NewMemory(nil)
	up := &upstream.Client{Assertions: assertion.New(api), BaseBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
	calls := 0
	for i := 0; i < 4; i++ {
		v := vend.New(registry.NewStatic(map[string]*provider.Definition{"okta": d}), up, st, vend.Options{})
		for c := 0; c < 10; c++ {
			_, err := v.Token(ctx, vend.Request{Provider: "okta", MinTTL: -1})
			if _, unavailable := vend.IsUnavailable(err); !unavailable {
				t.Fatalf("throttled KMS: want 503 + Retry-After, got %v", err)
			}
			calls++
		}
	}
	if n := px.Seen("Sign"); n == 0 || n > upstream.DefaultMaxAttempts {
		t.Fatalf("%d calls asked KMS to sign %d times; want one fetch's attempts (%d)", calls, n, upstream.DefaultMaxAttempts)
	}
}

// proxiedKMS is a KMS client on moto through the fault proxy, without SDK
// retries (a fault is seen once).
func proxiedKMS(t *testing.T) (*kms.Client, *faultproxy.Proxy) {
	t.Helper()
	px, err := faultproxy.Start(testenv.Moto(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Close)
	return kms.NewFromConfig(testenv.Config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(px.URL); o.RetryMaxAttempts = 1 }), px
}

// An alias re-pointed to rotate keys (moto's KMS): assertions stay signed by
// the key whose kid they carry, follow the alias within AliasRecheck, and
// at once after Forget (what the vendor does on invalid_client).
func TestAliasRepointedKeepsKidAndSignatureTogether(t *testing.T) {
	api, _ := proxiedKMS(t)
	ctx := context.Background()
	mk := func() string {
		out, err := api.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: kmstypes.KeySpecEccNistP256, KeyUsage: kmstypes.KeyUsageTypeSignVerify})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.KeyMetadata.KeyId)
	}
	key1, key2 := mk(), mk()
	alias := "alias/tv-rotate-" + strings.ReplaceAll(t.Name(), "/", "-")
	if _, err := api.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(key1)}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	keys := assertion.New(api).WithClock(func() time.Time { return now })
	d := def(func(d *provider.Definition) { d.KMSKeyID = alias })
	by := func(id string) *provider.Definition { return def(func(d *provider.Definition) { d.KMSKeyID = id }) }
	check := func(step, want string) {
		t.Helper()
		a, err := keys.Assertion(ctx, d, "")
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		// Verifies against the JWKS of the key it should be signed by, with
		// that key's kid: signature and kid from the same key. (Claims are
		// not validated: this test's clock runs ahead of the wall clock.)
		raw, err := assertion.New(api).JWKS(ctx, by(want))
		if err != nil {
			t.Fatal(err)
		}
		set, _ := jwk.Parse(raw)
		if _, err := jwt.Parse([]byte(a), jwt.WithKeySet(set), jwt.WithValidate(false)); err != nil {
			t.Fatalf("%s: the assertion's kid and signature are not both %s's: %v", step, want, err)
		}
	}
	check("before the rotation", key1)
	if _, err := api.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(key2)}); err != nil {
		t.Fatal(err)
	}
	check("just after the alias moved (the resolved key is still used)", key1)
	now = now.Add(assertion.AliasRecheck + time.Second)
	check("after the recheck interval", key2)
	if _, err := api.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(key1)}); err != nil {
		t.Fatal(err)
	}
	keys.Forget(d)
	check("after Forget (invalid_client)", key1)
}

func certFor(t *testing.T, k crypto.Signer) (string, *x509.Certificate) {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "svc"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), c
}

// With the signing key's certificate, assertions carry its thumbprints
// (x5t#S256; x5t when asked), which match the certificate; a certificate of
// another key is refused when the definition is loaded.
func TestCertificateThumbprintsInTheHeader(t *testing.T) {
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	certPEM, cert := certFor(t, k)
	d := def(func(d *provider.Definition) {
		d.PrivateKey, d.SigningCertificate, d.AssertionX5T = pemOf(t, k), certPEM, true
	})
	keys := assertion.New(nil)
	a, err := keys.Assertion(context.Background(), d, "")
	if err != nil {
		t.Fatal(err)
	}
	verify(t, keys, d, a)
	msg, _ := jws.Parse([]byte(a))
	h := msg.Signatures()[0].ProtectedHeaders()
	s256 := sha256.Sum256(cert.Raw)
	s1 := sha1.Sum(cert.Raw)
	var got256, got1 string
	h.Get("x5t#S256", &got256)
	h.Get("x5t", &got1)
	if got256 != base64.RawURLEncoding.EncodeToString(s256[:]) || got1 != base64.RawURLEncoding.EncodeToString(s1[:]) {
		t.Fatalf("x5t#S256 %q, x5t %q do not match the certificate", got256, got1)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	otherPEM, _ := certFor(t, other)
	bad := &provider.Definition{Name: "p", TokenURL: "https://idp.example/token", ClientID: "c", AuthMethod: provider.AuthPrivateKeyJWT,
		PrivateKey: pemOf(t, k), SigningCertificate: otherPEM}
	var fe *provider.FieldError
	if err := bad.Validate(); !errors.As(err, &fe) || fe.Field != "signing_certificate" {
		t.Fatalf("a certificate of another key: %v", err)
	}
}

// With issuer set, the assertion's aud is the issuer identifier, as its
// sole value, for the token endpoint and the revocation endpoint alike
// (FAPI 2.0 §5.3.2.1).
func TestIssuerIsTheSoleAudience(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keys := assertion.New(nil)
	d := def(func(d *provider.Definition) { d.PrivateKey, d.Issuer = pemOf(t, k), "https://idp.example" })
	for _, endpoint := range []string{"", "https://idp.example/revoke"} {
		a, err := keys.Assertion(context.Background(), d, endpoint)
		if err != nil {
			t.Fatal(err)
		}
		tok, _ := verify(t, keys, d, a)
		checkClaims(t, tok, d, "https://idp.example")
		parts := strings.Split(a, ".")
		raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
		if !strings.Contains(string(raw), `"aud":"https://idp.example"`) {
			t.Fatalf("aud is not a single string: %s", raw)
		}
	}
}
