// Package ststandin is a stand-in for the one AWS STS operation moto does
// not implement, GetWebIdentityToken (IAM outbound identity federation): it
// answers the SDK's query-protocol request with a JWT signed by its own key
// (RS256 or ES384), iss its own URL, sub the configured role ARN, aud the
// requested audiences, and serves its issuer's JWKS under
// /.well-known/jwks.json, as AWS does for an account's issuer.
package ststandin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// Mode makes the stand-in misbehave.
type Mode string

const (
	Normal   Mode = ""
	Disabled Mode = "disabled" // OutboundWebIdentityFederationDisabledException
	Throttle Mode = "throttle" // Throttling
	Expired  Mode = "expired"  // a token already expired
	Unsigned Mode = "unsigned" // alg none
)

// Server is the stand-in.
type Server struct {
	*httptest.Server
	Subject string // the calling role's ARN, the JWT's sub
	rsaKey  *rsa.PrivateKey
	ecKey   *ecdsa.PrivateKey
	calls   atomic.Int64
	mu      sync.Mutex
	mode    Mode
	hold    chan struct{}
}

// Start runs one on loopback for subject.
func Start(subject string) (*Server, error) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	ek, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	s := &Server{Subject: subject, rsaKey: rk, ecKey: ek}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s, nil
}

// SetMode changes how the next requests are answered.
func (s *Server) SetMode(m Mode) { s.mu.Lock(); s.mode = m; s.mu.Unlock() }

// Hold makes the next requests wait until Release (or until the request
// is abandoned): a slow STS.
func (s *Server) Hold() { s.mu.Lock(); s.hold = make(chan struct{}); s.mu.Unlock() }

// Release lets held requests and later ones through.
func (s *Server) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hold != nil {
		close(s.hold)
		s.hold = nil
	}
}

// Calls is how many GetWebIdentityToken requests it answered.
func (s *Server) Calls() int { return int(s.calls.Load()) }

// Issuer is the iss of the tokens it issues.
func (s *Server) Issuer() string { return s.URL }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/.well-known/jwks.json" {
		set := jwk.NewSet()
		for kid, pub := range map[string]any{"rsa": &s.rsaKey.PublicKey, "ec": &s.ecKey.PublicKey} {
			k, _ := jwk.Import(pub)
			k.Set(jwk.KeyIDKey, kid)
			k.Set(jwk.KeyUsageKey, "sig")
			if kid == "rsa" {
				k.Set(jwk.AlgorithmKey, jwa.RS256())
			} else {
				k.Set(jwk.AlgorithmKey, jwa.ES384())
			}
			set.AddKey(k)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(set)
		return
	}
	if err := r.ParseForm(); err != nil || r.Form.Get("Action") != "GetWebIdentityToken" {
		s.fail(w, 400, "InvalidAction", "only GetWebIdentityToken")
		return
	}
	s.calls.Add(1)
	s.mu.Lock()
	mode, hold := s.mode, s.hold
	s.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	switch mode {
	case Disabled:
		s.fail(w, 403, "OutboundWebIdentityFederationDisabledException", "outbound web identity federation is disabled for this account")
		return
	case Throttle:
		s.fail(w, 400, "Throttling", "Rate exceeded")
		return
	}
	var aud []string
	for i := 1; ; i++ {
		v := r.Form.Get("Audience.member." + strconv.Itoa(i))
		if v == "" {
			break
		}
		aud = append(aud, v)
	}
	alg := r.Form.Get("SigningAlgorithm")
	dur, _ := strconv.Atoi(r.Form.Get("DurationSeconds"))
	if len(aud) == 0 || (alg != "RS256" && alg != "ES384") || dur < 60 || dur > 3600 {
		s.fail(w, 400, "ValidationError", "Audience, SigningAlgorithm (RS256|ES384) and DurationSeconds (60-3600) are required")
		return
	}
	now := time.Now()
	exp := now.Add(time.Duration(dur) * time.Second)
	if mode == Expired {
		now, exp = now.Add(-2*time.Hour), now.Add(-time.Hour)
	}
	tok, _ := jwt.NewBuilder().Issuer(s.URL).Subject(s.Subject).Audience(aud).IssuedAt(now).NotBefore(now).Expiration(exp).JwtID(fmt.Sprint(now.UnixNano())).Build()
	var signed []byte
	var err error
	switch {
	case mode == Unsigned:
		claims, _ := json.Marshal(tok) // {"alg":"none"} . claims . (no signature)
		signed = []byte(b64(`{"alg":"none","typ":"JWT"}`) + "." + b64(string(claims)) + ".")
	case alg == "ES384":
		h := jws.NewHeaders()
		h.Set(jws.KeyIDKey, "ec")
		signed, err = jwt.Sign(tok, jwt.WithKey(jwa.ES384(), s.ecKey, jws.WithProtectedHeaders(h)))
	default:
		h := jws.NewHeaders()
		h.Set(jws.KeyIDKey, "rsa")
		signed, err = jwt.Sign(tok, jwt.WithKey(jwa.RS256(), s.rsaKey, jws.WithProtectedHeaders(h)))
	}
	if err != nil {
		s.fail(w, 500, "InternalFailure", err.Error())
		return
	}
	type result struct {
		Token      string `xml:"WebIdentityToken"`
		Expiration string `xml:"Expiration"`
	}
	type response struct {
		XMLName xml.Name `xml:"GetWebIdentityTokenResponse"`
		Xmlns   string   `xml:"xmlns,attr"`
		Result  result   `xml:"GetWebIdentityTokenResult"`
	}
	w.Header().Set("Content-Type", "text/xml")
	xml.NewEncoder(w).Encode(response{Xmlns: "https://sts.amazonaws.com/doc/2011-06-15/",
		Result: result{Token: string(signed), Expiration: exp.UTC().Format(time.RFC3339)}})
}

func (s *Server) fail(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>standin</RequestId></ErrorResponse>`, code, msg)
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
