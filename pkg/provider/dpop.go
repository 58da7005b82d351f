package provider

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"strings"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// ProfileFAPI2 is the FAPI 2.0 Security Profile's client rules, enforced at
// load (docs/dpop.md).
const ProfileFAPI2 = "fapi2"

// UsesDPoP reports whether token requests carry DPoP proofs (RFC 9449).
func (d *Definition) UsesDPoP() bool { return d.DPoPKMSKeyID != "" || d.DPoPPrivateKey != "" }

// DPoPAlg is the DPoP key's JWS algorithm as configured: dpop_signing_alg,
// else "" (the key's: ES256 for EC P-256, PS256 for RSA).
func (d *Definition) DPoPAlg() string { return d.DPoPSigningAlg }

// validateDPoP checks the DPoP key fields; errors never quote the key. A
// PEM key is parsed here, so one that cannot sign is refused at load, and
// its RFC 7638 thumbprint (jkt) becomes part of the registration: a new
// key re-keys the cache instead of serving tokens bound to the old one.
func (d *Definition) validateDPoP(fe func(field, reason string) error) error {
	d.dpopID = ""
	if !d.UsesDPoP() {
		if d.DPoPSigningAlg != "" {
			return fe("dpop_signing_alg", "needs dpop_kms_key_id or dpop_private_key")
		}
		return nil
	}
	switch d.DPoPSigningAlg {
	case "", "RS256", "PS256", "ES256":
	default:
		return fe("dpop_signing_alg", "must be PS256, ES256 or RS256")
	}
	switch {
	case d.DPoPKMSKeyID != "" && d.DPoPPrivateKey != "":
		return fe("dpop_private_key", "give dpop_kms_key_id or dpop_private_key, not both")
	case d.DPoPPrivateKey != "":
		k, err := ParsePrivateKey(d.DPoPPrivateKey)
		if err != nil {
			return fe("dpop_private_key", err.Error())
		}
		if _, isEC := k.(*ecdsa.PrivateKey); (isEC && d.DPoPSigningAlg != "" && d.DPoPSigningAlg != "ES256") || (!isEC && d.DPoPSigningAlg == "ES256") {
			return fe("dpop_signing_alg", "does not fit the key (RSA: PS256 or RS256; EC P-256: ES256)")
		}
		jkt, err := Thumbprint(k.Public())
		if err != nil {
			return fe("dpop_private_key", "cannot compute the key's thumbprint")
		}
		d.dpopID = "jkt:" + jkt
	default:
		if !printable(d.DPoPKMSKeyID) || strings.ContainsAny(d.DPoPKMSKeyID, " \t") {
			return fe("dpop_kms_key_id", "must be a KMS key id, ARN or alias")
		}
		// The thumbprint needs KMS; the key's name stands for it (a new
		// key id re-keys the cache as a new PEM key does).
		d.dpopID = "kms:" + d.DPoPKMSKeyID
	}
	return nil
}

// validateProfile enforces the FAPI 2.0 Security Profile's client rules
// (FAPI 2.0 §5.3.2): each refusal names the rule.
func (d *Definition) validateProfile(fe func(field, reason string) error) error {
	if d.Issuer != "" {
		if err := CheckEndpoint(d.Issuer); err != nil {
			return fe("issuer", err.Error())
		}
		if d.AssertionAudience != "" && d.AssertionAudience != d.Issuer {
			return fe("assertion_audience", "differs from issuer; with issuer set the assertion's aud is the issuer (leave assertion_audience out)")
		}
	}
	switch d.Profile {
	case "":
		return nil
	case ProfileFAPI2:
	default:
		return fe("profile", `must be "fapi2" (or absent)`)
	}
	const rule = "fapi2: "
	switch d.AuthMethod {
	case AuthPrivateKeyJWT, AuthTLS, AuthSelfSignedTLS:
	default:
		return fe("auth_method", rule+"client authentication must be private_key_jwt, tls_client_auth or self_signed_tls_client_auth")
	}
	if !d.UsesDPoP() && !d.UsesCertificate() {
		return fe("dpop_kms_key_id", rule+"tokens must be sender-constrained: set a DPoP key (dpop_kms_key_id or dpop_private_key) or use mTLS client authentication (certificate-bound tokens)")
	}
	if d.AuthMethod == AuthPrivateKeyJWT {
		if d.Issuer == "" {
			return fe("issuer", rule+"the client assertion's aud must be the authorization server's issuer identifier: set issuer")
		}
		alg := d.SigningAlg
		if alg == "" && d.PrivateKey != "" {
			if k, err := ParsePrivateKey(d.PrivateKey); err == nil {
				alg = naturalAlg(k.Public(), "RS256")
			}
		}
		if err := fapiAlg(alg); err != nil {
			return fe("signing_alg", rule+err.Error())
		}
	}
	if d.UsesDPoP() {
		alg := d.DPoPSigningAlg
		if alg == "" && d.DPoPKMSKeyID == "" {
			alg = "ES256" // checked above: a PEM key's default (ES256 or PS256) is permitted
		}
		if err := fapiAlg(alg); err != nil {
			return fe("dpop_signing_alg", rule+err.Error())
		}
	}
	return nil
}

// fapiAlg admits the algorithms FAPI 2.0 §5.4 permits that the vendor's
// keys can sign with (PS256, ES256; EdDSA is permitted but not offered).
func fapiAlg(alg string) error {
	switch alg {
	case "PS256", "ES256":
		return nil
	case "":
		return errors.New("set the algorithm explicitly (PS256 or ES256): a KMS key's default cannot be checked at load")
	}
	return errors.New("algorithm " + alg + " is not permitted (PS256, ES256 or EdDSA; never RS256)")
}

// naturalAlg is a key's default JWS algorithm: ES256 for EC P-256, rsa for RSA.
func naturalAlg(pub crypto.PublicKey, rsaAlg string) string {
	if _, ok := pub.(*rsa.PublicKey); ok {
		return rsaAlg
	}
	return "ES256"
}

// Thumbprint is a public key's RFC 7638 JWK thumbprint (SHA-256,
// base64url): DPoP's jkt (RFC 9449 §6.1).
func Thumbprint(pub crypto.PublicKey) (string, error) {
	key, err := jwk.Import(pub)
	if err != nil {
		return "", err
	}
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}
