package provider

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"
)

func keyPEM(t *testing.T, k any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func parseMap(t *testing.T, m map[string]any) (*Definition, error) {
	t.Helper()
	b, _ := json.Marshal(m)
	return Parse("idp", b)
}

func fieldErr(err error, field, reason string) bool {
	var fe *FieldError
	return errors.As(err, &fe) && fe.Field == field && strings.Contains(fe.Reason, reason)
}

// The DPoP key is checked at load like the assertion key, and never quoted.
func TestDPoPKeyCheckedAtLoad(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	base := func(mod map[string]any) map[string]any {
		m := map[string]any{"token_url": "https://idp.example/token", "client_id": "c", "client_secret": canary}
		for k, v := range mod {
			m[k] = v
		}
		return m
	}
	for name, c := range map[string]struct {
		mod           map[string]any
		field, reason string
	}{
		"both keys":       {map[string]any{"dpop_kms_key_id": "alias/k", "dpop_private_key": keyPEM(t, ec)}, "dpop_private_key", "not both"},
		"P-384":           {map[string]any{"dpop_private_key": keyPEM(t, p384)}, "dpop_private_key", "P-256"},
		"garbage":         {map[string]any{"dpop_private_key": canary}, "dpop_private_key", "PEM"},
		"ES256 on RSA":    {map[string]any{"dpop_private_key": keyPEM(t, rk), "dpop_signing_alg": "ES256"}, "dpop_signing_alg", "fit"},
		"PS256 on EC":     {map[string]any{"dpop_private_key": keyPEM(t, ec), "dpop_signing_alg": "PS256"}, "dpop_signing_alg", "fit"},
		"HS256":           {map[string]any{"dpop_kms_key_id": "alias/k", "dpop_signing_alg": "HS256"}, "dpop_signing_alg", "PS256"},
		"alg without key": {map[string]any{"dpop_signing_alg": "ES256"}, "dpop_signing_alg", "needs"},
		"bad KMS id":      {map[string]any{"dpop_kms_key_id": "alias/a b"}, "dpop_kms_key_id", "KMS"},
	} {
		_, err := parseMap(t, base(c.mod))
		if !fieldErr(err, c.field, c.reason) {
			t.Errorf("%s: %v", name, err)
		}
		if err != nil && strings.Contains(err.Error(), canary) {
			t.Errorf("%s: the error quotes a secret", name)
		}
	}
	for _, mod := range []map[string]any{
		{"dpop_private_key": keyPEM(t, ec)},
		{"dpop_private_key": keyPEM(t, rk)},
		{"dpop_private_key": keyPEM(t, rk), "dpop_signing_alg": "RS256"},
		{"dpop_kms_key_id": "arn:aws:kms:eu-west-1:123456789012:key/abc", "dpop_signing_alg": "ES256"},
	} {
		d, err := parseMap(t, base(mod))
		if err != nil || !d.UsesDPoP() {
			t.Errorf("%v refused: %v", mod, err)
		}
		if d != nil && strings.Contains(d.String(), "PRIVATE") {
			t.Error("String() shows the DPoP key")
		}
	}
}

// The DPoP key's identity is part of the registration fingerprint: a new
// key re-keys the cache; without DPoP the fingerprint is what it was.
func TestDPoPKeyInFingerprint(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mk := func(set func(*Definition)) *Definition {
		d := &Definition{Name: "p", TokenURL: "https://idp.example/token", ClientID: "c", ClientSecret: "s"}
		set(d)
		if err := d.Validate(); err != nil {
			t.Fatal(err)
		}
		return d
	}
	plain := mk(func(*Definition) {})
	a := mk(func(d *Definition) { d.DPoPPrivateKey = keyPEM(t, k1) })
	again := mk(func(d *Definition) { d.DPoPPrivateKey = keyPEM(t, k1); d.DPoPSigningAlg = "ES256" })
	b := mk(func(d *Definition) { d.DPoPPrivateKey = keyPEM(t, k2) })
	kmsA := mk(func(d *Definition) { d.DPoPKMSKeyID = "alias/a" })
	kmsB := mk(func(d *Definition) { d.DPoPKMSKeyID = "alias/b" })
	fps := map[string]string{"plain": plain.Fingerprint(), "a": a.Fingerprint(), "b": b.Fingerprint(), "kmsA": kmsA.Fingerprint(), "kmsB": kmsB.Fingerprint()}
	seen := map[string]string{}
	for n, fp := range fps {
		if o, dup := seen[fp]; dup {
			t.Fatalf("%s and %s share a fingerprint", n, o)
		}
		seen[fp] = n
	}
	if again.Fingerprint() != a.Fingerprint() {
		t.Fatal("the same key (same jkt) changed the fingerprint")
	}
	// Without DPoP nothing is added: existing cache keys stay put.
	if plain.Fingerprint() != (&Definition{ClientID: "c", TokenURL: "https://idp.example/token", AuthMethod: AuthBasic}).fingerprint() {
		t.Fatal("a definition without DPoP changed fingerprint")
	}
}

// Each FAPI 2.0 rule refuses a definition that breaks it, naming the rule.
func TestFAPI2ProfileRules(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	good := func(mod map[string]any) map[string]any {
		m := map[string]any{"token_url": "https://idp.example/token", "client_id": "c", "auth_method": "private_key_jwt",
			"private_key": keyPEM(t, ec), "dpop_private_key": keyPEM(t, ec), "issuer": "https://idp.example", "profile": "fapi2"}
		for k, v := range mod {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	for name, c := range map[string]struct {
		mod           map[string]any
		field, reason string
	}{
		"unknown profile":      {map[string]any{"profile": "fapi1"}, "profile", "fapi2"},
		"client secret auth":   {map[string]any{"auth_method": "client_secret_post", "client_secret": canary, "private_key": nil}, "auth_method", "fapi2: client authentication"},
		"client_secret_jwt":    {map[string]any{"auth_method": "client_secret_jwt", "client_secret": strings.Repeat("k", 40), "private_key": nil}, "auth_method", "fapi2: client authentication"},
		"not sender-bound":     {map[string]any{"dpop_private_key": nil}, "dpop_kms_key_id", "fapi2: tokens must be sender-constrained"},
		"no issuer":            {map[string]any{"issuer": nil}, "issuer", "fapi2: the client assertion's aud"},
		"RS256 assertion":      {map[string]any{"private_key": keyPEM(t, rk), "signing_alg": "RS256"}, "signing_alg", "fapi2: algorithm RS256"},
		"RSA default (RS256)":  {map[string]any{"private_key": keyPEM(t, rk)}, "signing_alg", "fapi2: algorithm RS256"},
		"KMS assertion no alg": {map[string]any{"private_key": nil, "kms_key_id": "alias/k"}, "signing_alg", "fapi2: set the algorithm"},
		"RS256 DPoP":           {map[string]any{"dpop_private_key": keyPEM(t, rk), "dpop_signing_alg": "RS256"}, "dpop_signing_alg", "fapi2: algorithm RS256"},
		"KMS DPoP no alg":      {map[string]any{"dpop_private_key": nil, "dpop_kms_key_id": "alias/d"}, "dpop_signing_alg", "fapi2: set the algorithm"},
		"aud not the issuer":   {map[string]any{"assertion_audience": "https://idp.example/token"}, "assertion_audience", "issuer"},
		"issuer not https":     {map[string]any{"issuer": "http://idp.example"}, "issuer", "https"},
	} {
		_, err := parseMap(t, good(c.mod))
		if !fieldErr(err, c.field, c.reason) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, mod := range map[string]map[string]any{
		"PEM EC both":         {},
		"PS256 RSA":           {"private_key": keyPEM(t, rk), "signing_alg": "PS256", "dpop_private_key": keyPEM(t, rk)},
		"KMS with algorithms": {"private_key": nil, "kms_key_id": "alias/k", "signing_alg": "PS256", "dpop_private_key": nil, "dpop_kms_key_id": "alias/d", "dpop_signing_alg": "ES256"},
		"aud equal to issuer": {"assertion_audience": "https://idp.example"},
	} {
		if _, err := parseMap(t, good(mod)); err != nil {
			t.Errorf("%s refused: %v", name, err)
		}
	}
}

// mTLS client authentication meets the profile's sender constraint
// without a DPoP key (its tokens are certificate-bound, RFC 8705 §3).
func TestFAPI2AcceptsCertificateBoundTokens(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "client"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	m := map[string]any{"token_url": "https://idp.example/token", "client_id": "c", "auth_method": "tls_client_auth",
		"client_certificate": cert, "client_key": keyPEM(t, k), "profile": "fapi2"}
	if _, err := parseMap(t, m); err != nil {
		t.Fatalf("mTLS under fapi2 refused: %v", err)
	}
}
