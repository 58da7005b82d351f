// Package dpop makes DPoP proofs (RFC 9449) with a provider's DPoP key,
// which the vendor holds as it holds a private_key_jwt key (a PEM key in
// the provider's secret, or an asymmetric KMS key that never leaves KMS):
// proofs for the vendor's own token requests, and proofs for the requests
// a consumer makes with a DPoP-bound token (docs/design.md §5). It also
// remembers each authorization server's latest DPoP nonce.
package dpop

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"golang.org/x/sync/errgroup"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/upstream"
)

// Keys resolves a provider's signing keys (assertion.Keys).
type Keys interface {
	KeySigner(ctx context.Context, def *provider.Definition, kmsKeyID, privateKey, alg, rsaDefault string) (*assertion.Signer, error)
}

// Prover signs DPoP proofs and remembers nonces. Safe for concurrent use.
type Prover struct {
	keys Keys
	now  func() time.Time

	nonces sync.Map // provider name -> the token endpoint's latest DPoP nonce
	pubs   sync.Map // PKIX DER of a public key -> *public
}

// public is a key's JWK (the proof header's jwk) and thumbprint (jkt).
type public struct {
	jwk json.RawMessage
	jkt string
}

// New returns a Prover signing with keys.
func New(keys Keys) *Prover { return &Prover{keys: keys, now: time.Now} }

// WithClock sets the clock (tests); it returns p.
func (p *Prover) WithClock(now func() time.Time) *Prover {
	p.now = now
	return p
}

// Request is what a proof is for (RFC 9449 §4.2).
type Request struct {
	// Method is the HTTP method (htm), Target the URL (htu: sent without
	// its query and fragment).
	Method, Target string
	// AccessToken, when set, is bound by its hash (ath): a proof for a
	// resource request. Nonce is the server's DPoP-Nonce, if it asked.
	AccessToken, Nonce string
}

// Proof is a signed proof and the thumbprint of the key that signed it.
type Proof struct {
	JWT string
	JKT string
}

// ErrNoKey is returned for a provider without a DPoP key.
var ErrNoKey = errors.New("provider has no DPoP key")

// Sign makes a proof for r with def's DPoP key: header typ dpop+jwt, alg,
// jwk (the public key); claims jti (fresh), htm, htu, iat, and ath and
// nonce when given. The private key never leaves the vendor (or KMS).
func (p *Prover) Sign(ctx context.Context, def *provider.Definition, r Request) (Proof, error) {
	if !def.UsesDPoP() {
		return Proof{}, ErrNoKey
	}
	if err := Check(r); err != nil {
		return Proof{}, err
	}
	htu, _ := HTU(r.Target)
	s, err := p.keys.KeySigner(ctx, def, def.DPoPKMSKeyID, def.DPoPPrivateKey, def.DPoPSigningAlg, "PS256")
	if err != nil {
		return Proof{}, err
	}
	pub, err := p.public(s.Public())
	if err != nil {
		return Proof{}, err
	}
	jti := make([]byte, 16)
	rand.Read(jti)
	claims := claims{JTI: base64.RawURLEncoding.EncodeToString(jti), HTM: r.Method, HTU: htu, IAT: p.now().Unix(), Nonce: r.Nonce}
	if r.AccessToken != "" {
		claims.ATH = ATH(r.AccessToken)
	}
	jwt, err := s.Sign(ctx, map[string]any{"typ": "dpop+jwt", "jwk": pub.jwk}, claims)
	if err != nil {
		return Proof{}, err
	}
	return Proof{JWT: jwt, JKT: pub.jkt}, nil
}

// MaxProofs bounds the proofs one consumer request may ask for at once
// (dpop_count, docs/design.md §5).
const MaxProofs = 8

// SignN makes n proofs for r in parallel (for a KMS key, n round trips at
// once), each with its own jti: proofs a consumer's extension hands out
// one per request.
func (p *Prover) SignN(ctx context.Context, def *provider.Definition, r Request, n int) ([]Proof, error) {
	return signN(ctx, n, func(ctx context.Context) (Proof, error) { return p.Sign(ctx, def, r) })
}

func signN(ctx context.Context, n int, sign func(context.Context) (Proof, error)) ([]Proof, error) {
	if n < 1 || n > MaxProofs {
		return nil, fmt.Errorf("dpop: between 1 and %d proofs at once", MaxProofs)
	}
	out := make([]Proof, n)
	g, gctx := errgroup.WithContext(ctx)
	for i := range out {
		g.Go(func() error {
			var err error
			out[i], err = sign(gctx)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

type claims struct {
	JTI   string `json:"jti"`
	HTM   string `json:"htm"`
	HTU   string `json:"htu"`
	IAT   int64  `json:"iat"`
	ATH   string `json:"ath,omitempty"`
	Nonce string `json:"nonce,omitempty"`
}

// Thumbprint is the jkt of def's DPoP key (RFC 7638, SHA-256).
func (p *Prover) Thumbprint(ctx context.Context, def *provider.Definition) (string, error) {
	if !def.UsesDPoP() {
		return "", ErrNoKey
	}
	s, err := p.keys.KeySigner(ctx, def, def.DPoPKMSKeyID, def.DPoPPrivateKey, def.DPoPSigningAlg, "PS256")
	if err != nil {
		return "", err
	}
	pub, err := p.public(s.Public())
	if err != nil {
		return "", err
	}
	return pub.jkt, nil
}

// public is the JWK and thumbprint of key, computed once per key.
func (p *Prover) public(key crypto.PublicKey) (*public, error) {
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("dpop: public key: %w", err)
	}
	if v, ok := p.pubs.Load(string(der)); ok {
		return v.(*public), nil
	}
	k, err := jwk.Import(key)
	if err != nil {
		return nil, fmt.Errorf("dpop: public key: %w", err)
	}
	raw, err := json.Marshal(k)
	if err != nil {
		return nil, err
	}
	jkt, err := provider.Thumbprint(key)
	if err != nil {
		return nil, err
	}
	v, _ := p.pubs.LoadOrStore(string(der), &public{jwk: raw, jkt: jkt})
	return v.(*public), nil
}

// Nonce is the latest DPoP nonce def's authorization server gave ("": none).
func (p *Prover) Nonce(def *provider.Definition) string {
	if v, ok := p.nonces.Load(def.Name); ok {
		return v.(string)
	}
	return ""
}

// SetNonce remembers the nonce an authorization server sent (DPoP-Nonce);
// a malformed one is ignored.
func (p *Prover) SetNonce(def *provider.Definition, nonce string) {
	if ValidNonce(nonce) {
		p.nonces.Store(def.Name, nonce)
	}
}

// TokenProof signs the proof for a token request to def's token
// endpoint (POST, no ath), with the remembered nonce: what
// upstream.Client sends as the DPoP header.
func (p *Prover) TokenProof(ctx context.Context, def *provider.Definition) (proof, jkt string, err error) {
	pr, err := p.Sign(ctx, def, Request{Method: "POST", Target: def.TokenURL, Nonce: p.Nonce(def)})
	if errors.Is(err, ErrNoKey) {
		return "", "", &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Permanent, Code: "dpop_key_invalid", Description: err.Error()}
	}
	if err != nil {
		if _, ok := upstream.AsRetrieveError(err); ok {
			return "", "", err
		}
		return "", "", &upstream.RetrieveError{Provider: def.Name, Kind: upstream.Permanent, Code: "dpop_key_invalid", Description: "cannot sign a DPoP proof", Err: err}
	}
	return pr.JWT, pr.JKT, nil
}

// Check refuses a request no proof can be made for: a method that is not
// an HTTP method token, a target that is not an absolute http(s) URL, a
// malformed nonce. Its errors name the field and never quote the value.
func Check(r Request) error {
	if _, err := HTU(r.Target); err != nil {
		return err
	}
	if !validMethod(r.Method) {
		return errors.New("dpop: the method must be an HTTP method in capitals (GET, POST, …)")
	}
	if r.Nonce != "" && !ValidNonce(r.Nonce) {
		return errors.New("dpop: the nonce is not an RFC 9449 nonce (printable ASCII without quotes or backslashes, at most 512 bytes)")
	}
	return nil
}

// ATH is an access token's hash as a proof carries it (RFC 9449 §4.2):
// base64url(SHA-256(token)).
func ATH(accessToken string) string {
	sum := sha256.Sum256([]byte(accessToken))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// HTU is a URL as a proof names it: absolute http(s), without query and
// fragment (RFC 9449 §4.2, §4.3 step 9).
func HTU(target string) (string, error) {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", errors.New("dpop: the target must be an absolute http(s) URL")
	}
	if u.User != nil {
		return "", errors.New("dpop: the target must not contain user information")
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	return u.String(), nil
}

func validMethod(m string) bool {
	if m == "" || len(m) > 20 {
		return false
	}
	for _, r := range m {
		if r < 'A' || r > 'Z' {
			return false
		}
	}
	return true
}

// ValidNonce reports whether n is an RFC 9449 §8.1 nonce (1*NQCHAR), at
// most 512 bytes.
func ValidNonce(n string) bool {
	if n == "" || len(n) > 512 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
