// Package dpop is a resource server that checks DPoP proofs as RFC 9449 §4.3
// and §7 ask, for the tests of the vendor's proofs: it accepts a request
// only with a DPoP-bound token and a proof signed by the key the token is
// bound to, for this request (htm, htu), this token (ath), recent (iat),
// never seen before (jti) and, when it demands one, with its nonce.
package dpop

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

// Server is the resource server. Set JKTOf; the rest is optional.
type Server struct {
	// JKTOf returns the thumbprint a token is bound to (its cnf.jkt), or
	// an error for a token the server does not accept.
	JKTOf func(token string) (string, error)
	// Nonce, when set, is demanded in every proof (RFC 9449 §9).
	Nonce string
	// Window bounds how far iat may be from now (default 60 s).
	Window time.Duration
	Now    func() time.Time

	mu       sync.Mutex
	seen     map[string]bool // jti of every accepted proof
	accepted int
	refused  []string // why each refused request was refused
}

// Refusals lists why requests were refused, in order.
func (s *Server) Refusals() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.refused...)
}

// Accepted counts accepted requests.
func (s *Server) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	code, err := s.check(r)
	s.mu.Lock()
	if err != nil {
		s.refused = append(s.refused, err.Error())
	} else {
		s.accepted++
	}
	s.mu.Unlock()
	if err != nil {
		if code == "use_dpop_nonce" {
			w.Header().Set("DPoP-Nonce", s.Nonce)
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`DPoP error=%q, algs="ES256 PS256 RS256"`, code))
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	w.Write([]byte("ok"))
}

// check verifies r's token and proof; code is the WWW-Authenticate error.
func (s *Server) check(r *http.Request) (code string, err error) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "DPoP") || tok == "" {
		return "invalid_token", errors.New("no DPoP-bound token (Authorization: DPoP …)")
	}
	proofs := r.Header.Values("DPoP")
	if len(proofs) != 1 {
		return "invalid_dpop_proof", fmt.Errorf("want one DPoP header, got %d", len(proofs))
	}
	msg, err := jws.Parse([]byte(proofs[0]))
	if err != nil || len(msg.Signatures()) != 1 {
		return "invalid_dpop_proof", errors.New("proof is not a JWS")
	}
	h := msg.Signatures()[0].ProtectedHeaders()
	var typ string
	if h.Get("typ", &typ) != nil || typ != "dpop+jwt" {
		return "invalid_dpop_proof", errors.New("typ is not dpop+jwt")
	}
	alg, _ := h.Algorithm()
	switch alg {
	case jwa.ES256(), jwa.PS256(), jwa.RS256():
	default:
		return "invalid_dpop_proof", fmt.Errorf("alg %s not accepted", alg)
	}
	key, ok := h.JWK()
	if !ok {
		return "invalid_dpop_proof", errors.New("no jwk in the header")
	}
	pub, err := jwk.PublicKeyOf(key)
	if err != nil {
		return "invalid_dpop_proof", errors.New("jwk is not a public key")
	}
	if priv, _ := jwk.IsPrivateKey(key); priv {
		return "invalid_dpop_proof", errors.New("jwk is a private key")
	}
	payload, err := jws.Verify([]byte(proofs[0]), jws.WithKey(alg, pub))
	if err != nil {
		return "invalid_dpop_proof", errors.New("signature does not verify with the jwk")
	}
	var c struct {
		JTI   string `json:"jti"`
		HTM   string `json:"htm"`
		HTU   string `json:"htu"`
		IAT   int64  `json:"iat"`
		ATH   string `json:"ath"`
		Nonce string `json:"nonce"`
	}
	if json.Unmarshal(payload, &c) != nil || c.JTI == "" {
		return "invalid_dpop_proof", errors.New("claims malformed or no jti")
	}
	if c.HTM != r.Method {
		return "invalid_dpop_proof", fmt.Errorf("htm %s for a %s", c.HTM, r.Method)
	}
	if want := "http://" + r.Host + r.URL.Path; c.HTU != want {
		return "invalid_dpop_proof", fmt.Errorf("htu %s for %s", c.HTU, want)
	}
	now, window := time.Now(), s.Window
	if s.Now != nil {
		now = s.Now()
	}
	if window == 0 {
		window = time.Minute
	}
	if d := now.Sub(time.Unix(c.IAT, 0)); d > window || d < -window {
		return "invalid_dpop_proof", fmt.Errorf("iat %v from now", d)
	}
	sum := sha256.Sum256([]byte(tok))
	if c.ATH != base64.RawURLEncoding.EncodeToString(sum[:]) {
		return "invalid_dpop_proof", errors.New("ath is not this token's hash")
	}
	if s.Nonce != "" && c.Nonce != s.Nonce {
		return "use_dpop_nonce", errors.New("nonce missing or stale")
	}
	var raw any
	if err := jwk.Export(pub, &raw); err != nil {
		return "invalid_dpop_proof", err
	}
	jkt, err := provider.Thumbprint(raw)
	if err != nil {
		return "invalid_dpop_proof", err
	}
	bound, err := s.JKTOf(tok)
	if err != nil {
		return "invalid_token", fmt.Errorf("token: %v", err)
	}
	if jkt != bound {
		return "invalid_dpop_proof", errors.New("proof signed by another key than the token is bound to")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
	if s.seen[c.JTI] {
		return "invalid_dpop_proof", errors.New("jti replayed")
	}
	s.seen[c.JTI] = true
	return "", nil
}
