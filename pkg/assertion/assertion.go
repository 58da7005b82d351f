// Package assertion makes RFC 7523 client assertions for private_key_jwt
// (RFC 7523 §2.2, OpenID Connect Core §9): a short-lived JWT signed either
// by a PEM private key from the provider's secret, or by an asymmetric KMS
// key that the vendor may only ask to sign with, so the private key never
// exists in any process.
package assertion

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/upstream"
)

// Lifetime is how long an assertion is valid (OIDC Core asks for short;
// the brief: at most 5 minutes).
const Lifetime = 2 * time.Minute

// ClockAllowance backdates iat and nbf, for servers whose clock is behind.
const ClockAllowance = 30 * time.Second

// KMS is the part of the KMS client signing uses.
type KMS interface {
	Sign(ctx context.Context, in *kms.SignInput, optFns ...func(*kms.Options)) (*kms.SignOutput, error)
	GetPublicKey(ctx context.Context, in *kms.GetPublicKeyInput, optFns ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error)
}

// Keys signs assertions for providers. Public keys are cached per KMS key
// and parsed PEM keys per secret, so a warm instance calls KMS once per
// assertion (Sign), never for the key itself.
type Keys struct {
	kms KMS // nil: only PEM keys
	now func() time.Time

	mu   sync.Mutex
	pubs map[string]kmsKey        // kms_key_id as written -> the key behind it
	pems map[string]crypto.Signer // SHA-256 of the PEM -> parsed key
}

// New returns Keys using api for kms_key_id providers (nil: none).
func New(api KMS) *Keys {
	return &Keys{kms: api, now: time.Now, pubs: map[string]kmsKey{}, pems: map[string]crypto.Signer{}}
}

// WithClock sets the clock (tests); it returns k.
func (k *Keys) WithClock(now func() time.Time) *Keys {
	k.now = now
	return k
}

// kmsKey is the key a kms_key_id resolved to: its ARN, which every Sign
// names (so an alias re-pointed meanwhile cannot make the signature and the
// kid disagree), and its public key.
type kmsKey struct {
	arn     string
	pub     crypto.PublicKey
	checked time.Time
}

// AliasRecheck is how often the key behind an alias is resolved again: an
// alias re-pointed to rotate keys is followed within it.
const AliasRecheck = 5 * time.Minute

func isAlias(id string) bool {
	return strings.HasPrefix(id, "alias/") || strings.Contains(id, ":alias/")
}

// Forget drops what is cached for def's key, so the next assertion resolves
// it again: called when the provider refused the client (invalid_client),
// which after a rotation means the registration and the key disagree.
func (k *Keys) Forget(def *provider.Definition) {
	k.mu.Lock()
	delete(k.pubs, def.KMSKeyID)
	k.mu.Unlock()
}

// signer signs a JWS signing input for one algorithm.
type signer interface {
	Public() crypto.PublicKey
	signInput(ctx context.Context, input []byte) ([]byte, error)
}

// signer returns def's signer and algorithm.
func (k *Keys) signer(ctx context.Context, def *provider.Definition) (signer, jwa.SignatureAlgorithm, error) {
	if def.KMSKeyID != "" {
		key, err := k.kmsPublic(ctx, def)
		if err != nil {
			return nil, jwa.SignatureAlgorithm{}, err
		}
		alg, spec, err := algorithm(def, key.pub)
		if err != nil {
			return nil, alg, err
		}
		return &kmsSigner{api: k.kms, def: def, keyID: key.arn, pub: key.pub, spec: spec}, alg, nil
	}
	key, err := k.pem(def)
	if err != nil {
		return nil, jwa.SignatureAlgorithm{}, err
	}
	alg, _, err := algorithm(def, key.Public())
	return localSigner{key: key, alg: alg}, alg, err
}

// Assertion returns a signed client assertion for def, its audience the
// token endpoint (or assertion_audience), with a fresh jti.
func (k *Keys) Assertion(ctx context.Context, def *provider.Definition, audience string) (string, error) {
	var (
		s      signer
		header map[string]string
	)
	if def.AuthMethod == provider.AuthClientSecretJWT {
		// RFC 7523 with OIDC Core §9 client_secret_jwt: HS256 keyed by the
		// client secret; no kid (the secret is the key).
		s, header = hmacSigner{secret: []byte(def.ClientSecret)}, map[string]string{"alg": "HS256", "typ": "JWT"}
	} else {
		ks, alg, err := k.signer(ctx, def)
		if err != nil {
			return "", err
		}
		kid, err := keyID(def, ks.Public())
		if err != nil {
			return "", permanent(def, "signing_key_invalid", err)
		}
		s, header = ks, map[string]string{"alg": alg.String(), "typ": "JWT", "kid": kid}
		if def.SigningCertificate != "" {
			cert, err := provider.ParseCertificate(def.SigningCertificate)
			if err != nil || !provider.SamePublicKey(ks.Public(), cert.PublicKey) {
				return "", permanent(def, "signing_key_invalid", errors.New("signing_certificate is not the certificate of the signing key"))
			}
			// RFC 7515 §4.1.8 and §4.1.7: thumbprints of the certificate's DER.
			s256 := sha256.Sum256(cert.Raw)
			header["x5t#S256"] = b64.EncodeToString(s256[:])
			if def.AssertionX5T {
				s1 := sha1.Sum(cert.Raw) // #nosec: a thumbprint the server asks for, not a signature
				header["x5t"] = b64.EncodeToString(s1[:])
			}
		}
	}
	switch {
	case def.Issuer != "":
		// The authorization server's issuer identifier, as the sole aud,
		// for every endpoint (FAPI 2.0 §5.3.2.1; RFC 7523 allows it).
		audience = def.Issuer
	case audience == "": // a token request: the configured audience, else the token endpoint
		audience = def.TokenURL
		if def.AssertionAudience != "" {
			audience = def.AssertionAudience
		}
	}
	jti := make([]byte, 16)
	rand.Read(jti)
	now := k.now().Unix()
	// Valid from a little before now: an authorization server whose clock
	// runs behind ours must not see an assertion from its future.
	nbf := now - int64(ClockAllowance/time.Second)
	hdr, _ := json.Marshal(header)
	claims, _ := json.Marshal(map[string]any{"iss": def.ClientID, "sub": def.ClientID, "aud": audience,
		"jti": hex.EncodeToString(jti), "iat": nbf, "nbf": nbf, "exp": now + int64(Lifetime/time.Second)})
	// JWS compact serialization (RFC 7515 §7.1), assembled here rather than
	// by jwx: a KMS key signs the signing input itself (MessageType RAW),
	// which jwx's crypto.Signer path cannot express — it hands a digest.
	input := b64.EncodeToString(hdr) + "." + b64.EncodeToString(claims)
	sig, err := s.signInput(ctx, []byte(input))
	if err != nil {
		var re *upstream.RetrieveError
		if errors.As(err, &re) {
			return "", re // a KMS failure, already classified
		}
		return "", permanent(def, "assertion_signing_failed", err)
	}
	return input + "." + b64.EncodeToString(sig), nil
}

var b64 = base64.RawURLEncoding

// hmacSigner signs client_secret_jwt assertions (HS256).
type hmacSigner struct{ secret []byte }

func (h hmacSigner) Public() crypto.PublicKey { return nil }

func (h hmacSigner) signInput(_ context.Context, input []byte) ([]byte, error) {
	m := hmac.New(sha256.New, h.secret)
	m.Write(input)
	return m.Sum(nil), nil
}

// localSigner signs with a PEM key.
type localSigner struct {
	key crypto.Signer
	alg jwa.SignatureAlgorithm
}

func (l localSigner) Public() crypto.PublicKey { return l.key.Public() }

func (l localSigner) signInput(_ context.Context, input []byte) ([]byte, error) {
	digest := sha256.Sum256(input)
	var opts crypto.SignerOpts = crypto.SHA256
	if l.alg == jwa.PS256() {
		opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	}
	sig, err := l.key.Sign(rand.Reader, digest[:], opts)
	if err != nil {
		return nil, err
	}
	if _, ok := l.key.Public().(*ecdsa.PublicKey); ok {
		return rawECDSA(sig)
	}
	return sig, nil
}

// rawECDSA turns an ASN.1 DER ECDSA signature into JWS's r || s, 32 bytes
// each for P-256 (RFC 7518 §3.4).
func rawECDSA(der []byte) ([]byte, error) {
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) > 0 {
		return nil, errors.New("malformed ECDSA signature")
	}
	out := make([]byte, 64)
	rs.R.FillBytes(out[:32])
	rs.S.FillBytes(out[32:])
	return out, nil
}

// JWKS returns the public JWK Set to register at the provider.
func (k *Keys) JWKS(ctx context.Context, def *provider.Definition) ([]byte, error) {
	s, alg, err := k.signer(ctx, def)
	if err != nil {
		return nil, err
	}
	kid, err := keyID(def, s.Public())
	if err != nil {
		return nil, err
	}
	set := jwk.NewSet()
	if err := addPublic(set, s.Public(), kid, alg); err != nil {
		return nil, err
	}
	// Keys published ahead of (or after) their use: a rotation publishes the
	// next key at least one cache lifetime before it signs.
	for _, p := range def.PublishKeys {
		pub, err := k.published(ctx, def, p)
		if err != nil {
			return nil, err
		}
		pd := *def
		pd.KeyID, pd.SigningAlg = "", ""
		palg, _, err := algorithm(&pd, pub)
		if err != nil {
			return nil, err
		}
		pkid, err := keyID(&pd, pub)
		if err != nil {
			return nil, err
		}
		if err := addPublic(set, pub, pkid, palg); err != nil {
			return nil, err
		}
	}
	return json.MarshalIndent(set, "", "  ")
}

func addPublic(set jwk.Set, pub crypto.PublicKey, kid string, alg jwa.SignatureAlgorithm) error {
	key, err := jwk.Import(pub)
	if err != nil {
		return err
	}
	key.Set(jwk.KeyIDKey, kid)
	key.Set(jwk.AlgorithmKey, alg)
	key.Set(jwk.KeyUsageKey, "sig")
	return set.AddKey(key)
}

// published is the public key of a publish_keys entry: a PEM public key, or
// a KMS key (id, ARN or alias).
func (k *Keys) published(ctx context.Context, def *provider.Definition, entry string) (crypto.PublicKey, error) {
	if pub, err := provider.ParsePublicKey(entry); err == nil {
		return pub, nil
	}
	pd := *def
	pd.KMSKeyID = entry
	key, err := k.kmsPublic(ctx, &pd)
	if err != nil {
		return nil, err
	}
	return key.pub, nil
}

// keyID is the configured key_id, else the RFC 7638 thumbprint (SHA-256,
// base64url) of the public key.
func keyID(def *provider.Definition, pub crypto.PublicKey) (string, error) {
	if def.KeyID != "" {
		return def.KeyID, nil
	}
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

// algorithm is def's signing_alg, checked against the key, or the key's
// natural one (RS256 for RSA, ES256 for P-256), with its KMS spec.
func algorithm(def *provider.Definition, pub crypto.PublicKey) (jwa.SignatureAlgorithm, kmstypes.SigningAlgorithmSpec, error) {
	name := def.SigningAlg
	switch p := pub.(type) {
	case *rsa.PublicKey:
		switch name {
		case "", "RS256":
			return jwa.RS256(), kmstypes.SigningAlgorithmSpecRsassaPkcs1V15Sha256, nil
		case "PS256":
			return jwa.PS256(), kmstypes.SigningAlgorithmSpecRsassaPssSha256, nil
		}
	case *ecdsa.PublicKey:
		if p.Curve == elliptic.P256() && (name == "" || name == "ES256") {
			return jwa.ES256(), kmstypes.SigningAlgorithmSpecEcdsaSha256, nil
		}
	}
	return jwa.SignatureAlgorithm{}, "", permanent(def, "signing_key_invalid", fmt.Errorf("signing_alg %q does not fit the key (RSA: RS256 or PS256; EC P-256: ES256)", name))
}

// pem parses def's private_key once per secret.
func (k *Keys) pem(def *provider.Definition) (crypto.Signer, error) {
	sum := sha256.Sum256([]byte(def.PrivateKey))
	id := hex.EncodeToString(sum[:])
	k.mu.Lock()
	s, ok := k.pems[id]
	k.mu.Unlock()
	if ok {
		return s, nil
	}
	s, err := provider.ParsePrivateKey(def.PrivateKey)
	if err != nil {
		return nil, permanent(def, "signing_key_invalid", err)
	}
	k.mu.Lock()
	k.pems[id] = s
	k.mu.Unlock()
	return s, nil
}

func (k *Keys) kmsPublic(ctx context.Context, def *provider.Definition) (kmsKey, error) {
	if k.kms == nil {
		return kmsKey{}, permanent(def, "signing_key_invalid", errors.New("kms_key_id set but no KMS client"))
	}
	k.mu.Lock()
	key, ok := k.pubs[def.KMSKeyID]
	k.mu.Unlock()
	if ok && (!isAlias(def.KMSKeyID) || k.now().Before(key.checked.Add(AliasRecheck))) {
		return key, nil
	}
	out, err := k.kms.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String(def.KMSKeyID)})
	if err != nil {
		return kmsKey{}, kmsError(def, err)
	}
	if out.KeyUsage != kmstypes.KeyUsageTypeSignVerify {
		return kmsKey{}, permanent(def, "signing_key_invalid", fmt.Errorf("kms_key_id: key usage is %s, want SIGN_VERIFY", out.KeyUsage))
	}
	pub, err := x509.ParsePKIXPublicKey(out.PublicKey)
	if err != nil {
		return kmsKey{}, permanent(def, "signing_key_invalid", err)
	}
	key = kmsKey{arn: aws.ToString(out.KeyId), pub: pub, checked: k.now()}
	if key.arn == "" {
		key.arn = def.KMSKeyID
	}
	k.mu.Lock()
	k.pubs[def.KMSKeyID] = key
	k.mu.Unlock()
	return key, nil
}

// kmsSigner signs in KMS: the private key never leaves it. The signing
// input goes as the message (MessageType RAW; an assertion's is far under
// KMS's 4096-byte limit) and KMS hashes it. DIGEST would do the same for
// real KMS, but moto (5.2) signs a DIGEST as if it were the message, so it
// could not be proven here. KMS returns ECDSA signatures DER-encoded.
type kmsSigner struct {
	api   KMS
	def   *provider.Definition
	keyID string // the resolved key's ARN, never the alias
	pub   crypto.PublicKey
	spec  kmstypes.SigningAlgorithmSpec
}

func (s *kmsSigner) Public() crypto.PublicKey { return s.pub }

func (s *kmsSigner) signInput(ctx context.Context, input []byte) ([]byte, error) {
	out, err := s.api.Sign(ctx, &kms.SignInput{KeyId: aws.String(s.keyID), Message: input,
		MessageType: kmstypes.MessageTypeRaw, SigningAlgorithm: s.spec})
	if err != nil {
		return nil, kmsError(s.def, err)
	}
	if _, ok := s.pub.(*ecdsa.PublicKey); ok {
		return rawECDSA(out.Signature)
	}
	return out.Signature, nil
}

// kmsError types a KMS failure like an upstream one: throttling, internal
// errors and network failures are transient (the vendor's cooldown keeps a
// throttled KMS from being stampeded); a missing, disabled or forbidden key
// is permanent.
func kmsError(def *provider.Definition, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "ThrottlingException", "KMSInternalException", "DependencyTimeoutException", "KeyUnavailableException", "LimitExceededException":
			return &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Transient, Code: "kms_unavailable", Description: "KMS signing: " + ae.ErrorCode(), Err: err}
		}
		return &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Permanent, Code: "signing_key_invalid", Description: "KMS signing: " + ae.ErrorCode(), Err: err}
	}
	return &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Transient, Code: "kms_unavailable", Description: "KMS signing failed", Err: err}
}

func permanent(def *provider.Definition, code string, err error) error {
	return &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Permanent, Code: code, Description: err.Error(), Err: err}
}

// Signer signs JWS compact serializations with one key of a provider: in
// process for a PEM key, in KMS (the private key never leaves it) for a
// KMS key. DPoP proofs (package dpop) are signed with it.
type Signer struct {
	s   signer
	alg jwa.SignatureAlgorithm
	def *provider.Definition
}

// Public is the signing key's public half.
func (s *Signer) Public() crypto.PublicKey { return s.s.Public() }

// Alg is the JWS algorithm the signer signs with.
func (s *Signer) Alg() string { return s.alg.String() }

// Sign returns the compact JWS of header and claims (each marshalled to
// JSON); alg is set in the header. A KMS failure is classified as for an
// assertion (transient or permanent).
func (s *Signer) Sign(ctx context.Context, header map[string]any, claims any) (string, error) {
	h := make(map[string]any, len(header)+1)
	for k, v := range header {
		h[k] = v
	}
	h["alg"] = s.alg.String()
	hdr, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	cl, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	input := b64.EncodeToString(hdr) + "." + b64.EncodeToString(cl)
	sig, err := s.s.signInput(ctx, []byte(input))
	if err != nil {
		var re *upstream.RetrieveError
		if errors.As(err, &re) {
			return "", re
		}
		return "", permanent(s.def, "signing_failed", err)
	}
	return input + "." + b64.EncodeToString(sig), nil
}

// KeySigner returns the signer of another key of def (not its assertion
// key): kmsKeyID or privateKey, exactly one, signing with alg ("" for the
// key's default: ES256 for EC P-256, rsaDefault for RSA). It is resolved
// and checked as an assertion key is, with the same caches.
func (k *Keys) KeySigner(ctx context.Context, def *provider.Definition, kmsKeyID, privateKey, alg, rsaDefault string) (*Signer, error) {
	pd := *def
	pd.KMSKeyID, pd.PrivateKey, pd.SigningAlg, pd.KeyID = kmsKeyID, privateKey, alg, ""
	s, a, err := k.signer(ctx, &pd)
	if err == nil && alg == "" && a == jwa.RS256() && rsaDefault != "" && rsaDefault != "RS256" {
		pd.SigningAlg = rsaDefault
		s, a, err = k.signer(ctx, &pd)
	}
	if err != nil {
		return nil, err
	}
	return &Signer{s: s, alg: a, def: &pd}, nil
}

// ForgetKey drops what is cached for the KMS key kmsKeyID (see Forget).
func (k *Keys) ForgetKey(kmsKeyID string) {
	k.mu.Lock()
	delete(k.pubs, kmsKeyID)
	k.mu.Unlock()
}
