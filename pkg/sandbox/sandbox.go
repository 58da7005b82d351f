// Package sandbox is an OAuth 2.0 authorization server that speaks each seed
// provider style exactly (docs/design.md §1): Kopo Kopo K2 Connect, Mobifinance and
// django-oauth-toolkit. Local mode serves it so a newcomer sees tokens vended
// with no account anywhere; tests use it as the upstream fake, because it
// counts requests per client and can be told to misbehave.
//
// It is not a production authorization server: tokens live in memory and
// any registered client gets any token it asks for.
package sandbox

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Style is a provider's wire dialect.
type Style string

const (
	// K2: POST {base}/oauth/token, credentials and grant_type in the form body,
	// expires_in 3600, no refresh token; revoke at {base}/oauth/revoke.
	K2 Style = "k2"
	// Mobi: POST with client_id, client_secret, grant_type in the URL query and
	// an empty form body; the answer has no expires_in.
	Mobi Style = "mobi"
	// DOT: POST {base}/o/token/ with HTTP Basic or body credentials,
	// space-separated scope, expires_in 36000 and scope echoed.
	DOT Style = "dot"
)

// Paths under the sandbox root for each style.
const (
	K2TokenPath    = "/k2/oauth/token"
	K2RevokePath   = "/k2/oauth/revoke"
	MobiTokenPath  = "/mobi/oauth/token"
	DOTTokenPath   = "/dot/o/token/"
	DOTRevokePath  = "/dot/o/revoke_token/"
	ResourcePath   = "/resource"
	controlPrefix  = "/_sandbox/"
	maxRequestBody = 64 << 10
)

// Client is one registered client.
type Client struct {
	ID     string `json:"client_id"`
	Secret string `json:"client_secret"`
	Style  Style  `json:"style"`
	// Scopes the client may ask for; empty means any.
	Scopes []string `json:"scopes,omitempty"`
	// ExpiresIn overrides the style's lifetime (0 keeps it). Ignored for Mobi.
	ExpiresIn int `json:"expires_in,omitempty"`
	// RevokeOnIssue invalidates the client's earlier tokens when it issues a new one.
	RevokeOnIssue bool `json:"revoke_on_issue,omitempty"`
	// Federated makes it a federated client, as Entra ID federated identity
	// credentials and Keycloak's federated client authentication work: it
	// authenticates with a JWT another issuer signed (client_assertion,
	// jwt-bearer), checked against that issuer's JWKS, and has no secret.
	Federated *Federation `json:"federated,omitempty"`
}

// Federation is what a federated client trusts: one issuer, one subject,
// one audience.
type Federation struct {
	Issuer   string `json:"issuer"`
	Subject  string `json:"subject"`
	Audience string `json:"audience"`
}

// Fault makes the server misbehave on token requests.
type Fault struct {
	// ClientID limits the fault to one client; empty means every client.
	ClientID string `json:"client_id,omitempty"`
	// Delay is slept before answering (the request's context can cut it short).
	Delay time.Duration `json:"delay,omitempty"`
	// Status answers with this status and a matching error body (500, 503, 505, 429…).
	Status int `json:"status,omitempty"`
	// RetryAfter is sent as Retry-After seconds with Status.
	RetryAfter int `json:"retry_after,omitempty"`
	// Body replaces the answer: "garbage" (not JSON), "html" (an error page
	// with status 200), "empty" (status 200, no body), "huge" (2 MiB),
	// "drop" (the connection is closed with no answer: a network error),
	// "echo_auth" (400 invalid_client whose description echoes the request's
	// Authorization header and form, as careless servers do).
	Body string `json:"body,omitempty"`
	// Times is how many requests it affects; 0 means until cleared.
	Times int `json:"times,omitempty"`
}

type issued struct {
	clientID string
	expiry   time.Time
}

// Server is the sandbox. Its zero value is not usable; call New.
type Server struct {
	targets  map[string][]string // client id -> resource/audience of its requests
	mu       sync.Mutex
	clients  map[string]*Client
	retired  map[string]string // client id -> previous secret, refused after rotation
	tokens   map[string]issued
	faults   []*Fault
	requests map[string]int // token requests per client id (also failed ones)
	revokes  map[string]int
	// inflight, peak and times: token requests per client being answered
	// now, the most at once, and when each arrived (the server's clock),
	// so a test measures concurrency and rate where a provider would.
	inflight map[string]int
	peak     map[string]int
	times    map[string][]time.Time
	total    int
	now      func() time.Time
}

// New returns a server with no clients.
func New() *Server {
	return &Server{
		clients:  map[string]*Client{},
		retired:  map[string]string{},
		tokens:   map[string]issued{},
		requests: map[string]int{},
		revokes:  map[string]int{},
		inflight: map[string]int{},
		peak:     map[string]int{},
		times:    map[string][]time.Time{},
		now:      time.Now,
	}
}

// SetClock makes the server read time from now (token expiry, request
// times): a test on a fake clock measures rates on it.
func (s *Server) SetClock(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

// PeakInFlight is the most token requests of a client the server was
// answering at once since the last ResetStats.
func (s *Server) PeakInFlight(clientID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak[clientID]
}

// RequestTimes is when each token request of a client arrived (the
// server's clock), in order, since the last ResetStats.
func (s *Server) RequestTimes(clientID string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.times[clientID]...)
}

// AddClient registers (or replaces) a client.
func (s *Server) AddClient(c Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := c
	s.clients[c.ID] = &cp
}

// Rotate gives a client a new secret; the old one is refused from now on.
func (s *Server) Rotate(clientID, newSecret string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[clientID]
	if !ok {
		return fmt.Errorf("sandbox: no client %q", clientID)
	}
	s.retired[clientID] = c.Secret
	c.Secret = newSecret
	return nil
}

// SetFault adds a fault; faults are consulted in the order added.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := f
	s.faults = append(s.faults, &cp)
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Stats is what the server has seen.
type Stats struct {
	Total    int            `json:"total"`
	Requests map[string]int `json:"requests"`
	Revokes  map[string]int `json:"revokes"`
}

// Stats returns request counts per client.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Total: s.total, Requests: map[string]int{}, Revokes: map[string]int{}}
	for k, v := range s.requests {
		st.Requests[k] = v
	}
	for k, v := range s.revokes {
		st.Revokes[k] = v
	}
	return st
}

// targetOf renders a request's resource and audience parameters (RFC 8707)
// as "resource=a,b audience=c", or "" when it has none.
func targetOf(style Style, r *http.Request, form url.Values) string {
	if style == Mobi {
		form = r.URL.Query()
	}
	if len(form["resource"]) == 0 && len(form["audience"]) == 0 {
		return ""
	}
	return "resource=" + strings.Join(form["resource"], ",") + " audience=" + strings.Join(form["audience"], ",")
}

// Targets returns the resource and audience parameters of a client's token
// requests that had any, in order.
func (s *Server) Targets(clientID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.targets[clientID]...)
}

// Requests returns how many token requests a client has made.
func (s *Server) Requests(clientID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[clientID]
}

// ResetStats zeroes the counters.
func (s *Server) ResetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total = 0
	s.requests = map[string]int{}
	s.revokes = map[string]int{}
	s.peak = map[string]int{}
	for id, n := range s.inflight {
		s.peak[id] = n
	}
	s.times = map[string][]time.Time{}
}

// Valid reports whether token is a live token this server issued.
func (s *Server) Valid(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[token]
	return ok && s.now().Before(t.expiry)
}

// RevokeToken invalidates one token, as if an operator had revoked it.
func (s *Server) RevokeToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, token)
}

// Handler serves every style, the resource check and the control API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+K2TokenPath, s.token(K2))
	mux.HandleFunc("POST "+MobiTokenPath, s.token(Mobi))
	mux.HandleFunc("POST "+DOTTokenPath, s.token(DOT))
	mux.HandleFunc("POST "+K2RevokePath, s.revoke(K2))
	mux.HandleFunc("POST "+DOTRevokePath, s.revoke(DOT))
	mux.HandleFunc("GET "+ResourcePath, s.resource)
	mux.HandleFunc("POST "+controlPrefix+"clients", s.controlClient)
	mux.HandleFunc("POST "+controlPrefix+"rotate", s.controlRotate)
	mux.HandleFunc("POST "+controlPrefix+"faults", s.controlFault)
	mux.HandleFunc("DELETE "+controlPrefix+"faults", func(w http.ResponseWriter, _ *http.Request) {
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET "+controlPrefix+"stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Stats())
	})
	mux.HandleFunc("DELETE "+controlPrefix+"stats", func(w http.ResponseWriter, _ *http.Request) {
		s.ResetStats()
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

type oauthError struct {
	status int
	code   string
	desc   string
}

// credentials extracts client authentication the way the style requires.
// Each style is strict about where credentials travel, so a client that puts
// them in the wrong place fails here as it would against the real provider.
func credentials(style Style, r *http.Request, form url.Values) (id, secret string, oe *oauthError) {
	q := r.URL.Query()
	switch style {
	case Mobi:
		if len(form) > 0 {
			return "", "", &oauthError{400, "invalid_request", "parameters must be sent in the query string with an empty body"}
		}
		if q.Get("grant_type") == "" || q.Get("client_id") == "" || q.Get("client_secret") == "" {
			return "", "", &oauthError{400, "invalid_request", "grant_type, client_id and client_secret are required in the query"}
		}
		return q.Get("client_id"), q.Get("client_secret"), nil
	case K2:
		if q.Has("client_secret") || q.Has("client_id") {
			return "", "", &oauthError{400, "invalid_request", "credentials must be in the form body"}
		}
		if _, _, ok := r.BasicAuth(); ok {
			return "", "", &oauthError{400, "invalid_request", "credentials must be in the form body"}
		}
		return form.Get("client_id"), form.Get("client_secret"), nil
	default: // DOT: Basic or body, never both (RFC 6749 §2.3).
		if q.Has("client_secret") {
			return "", "", &oauthError{400, "invalid_request", "credentials must not be in the query"}
		}
		user, pass, basic := r.BasicAuth()
		if basic {
			if form.Has("client_secret") {
				return "", "", &oauthError{400, "invalid_request", "more than one client authentication method"}
			}
			var err1, err2 error
			user, err1 = url.QueryUnescape(user)
			pass, err2 = url.QueryUnescape(pass)
			if err1 != nil || err2 != nil {
				return "", "", &oauthError{401, "invalid_client", "malformed Basic credentials"}
			}
			return user, pass, nil
		}
		return form.Get("client_id"), form.Get("client_secret"), nil
	}
}

// claimedID finds the client id a refused request named, wherever it put it,
// so that requests are counted against the client that sent them.
func claimedID(r *http.Request, form url.Values) string {
	if id := form.Get("client_id"); id != "" {
		return id
	}
	if u, _, ok := r.BasicAuth(); ok {
		if id, err := url.QueryUnescape(u); err == nil {
			return id
		}
	}
	return r.URL.Query().Get("client_id")
}

func (s *Server) parseForm(r *http.Request) (url.Values, *oauthError) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil || len(body) > maxRequestBody {
		return nil, &oauthError{400, "invalid_request", "unreadable body"}
	}
	if len(body) == 0 {
		return url.Values{}, nil
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/x-www-form-urlencoded" {
		return nil, &oauthError{400, "invalid_request", "body must be application/x-www-form-urlencoded"}
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, &oauthError{400, "invalid_request", "malformed form body"}
	}
	return form, nil
}

func (s *Server) token(style Style) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		form, oe := s.parseForm(r)
		var id, secret string
		if oe == nil {
			id, secret, oe = credentials(style, r, form)
		}
		if id == "" {
			id = claimedID(r, form)
		}
		s.mu.Lock()
		s.total++
		s.requests[id]++
		s.inflight[id]++
		s.peak[id] = max(s.peak[id], s.inflight[id])
		s.times[id] = append(s.times[id], s.now())
		defer func() {
			s.mu.Lock()
			s.inflight[id]--
			s.mu.Unlock()
		}()
		if s.targets == nil {
			s.targets = map[string][]string{}
		}
		if t := targetOf(style, r, form); t != "" {
			s.targets[id] = append(s.targets[id], t)
		}
		fault := s.takeFault(id)
		s.mu.Unlock()
		if fault != nil && fault.Delay > 0 {
			select {
			case <-time.After(fault.Delay):
			case <-r.Context().Done():
				return
			}
		}
		if fault != nil && s.misbehave(w, r, form, style, fault) {
			return
		}
		if oe != nil {
			writeError(w, oe)
			return
		}
		grant := form.Get("grant_type")
		if style == Mobi {
			grant = r.URL.Query().Get("grant_type")
		}
		scope := form.Get("scope")
		if style == Mobi {
			scope = r.URL.Query().Get("scope")
		}
		s.mu.Lock()
		c := s.clients[id]
		s.mu.Unlock()
		if c != nil && c.Federated != nil {
			// The secret compare below is replaced by the assertion's check.
			if err := verifyFederated(r.Context(), c.Federated, form); err != nil {
				writeError(w, &oauthError{401, "invalid_client", "federated credential refused: " + err.Error()})
				return
			}
			secret = c.Secret
		}
		resp, oe := s.issue(style, id, secret, grant, scope)
		if oe != nil {
			writeError(w, oe)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Pragma", "no-cache")
		writeJSON(w, http.StatusOK, resp)
	}
}

// takeFault returns the first fault that applies to clientID, consuming one use.
func (s *Server) takeFault(clientID string) *Fault {
	for i, f := range s.faults {
		if f.ClientID != "" && f.ClientID != clientID {
			continue
		}
		cp := *f
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
		}
		return &cp
	}
	return nil
}

// misbehave writes a faulty answer and reports whether it did.
func (s *Server) misbehave(w http.ResponseWriter, r *http.Request, form url.Values, style Style, f *Fault) bool {
	switch f.Body {
	case "drop":
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return true
			}
		}
		panic(http.ErrAbortHandler) // HTTP/2 or a recorder: abort the response
	case "echo_auth":
		writeError(w, &oauthError{http.StatusBadRequest, "invalid_client",
			"bad credentials in Authorization: " + r.Header.Get("Authorization") + " form: " + form.Encode() + " query: " + r.URL.RawQuery})
		return true
	case "garbage":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(statusOr(f.Status, 200))
		io.WriteString(w, `{"access_token": tok`)
		return true
	case "html":
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(statusOr(f.Status, 200))
		io.WriteString(w, "<html><body><h1>Service Temporarily Unavailable</h1></body></html>")
		return true
	case "empty":
		w.WriteHeader(statusOr(f.Status, 200))
		return true
	case "huge":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(statusOr(f.Status, 200))
		io.WriteString(w, `{"access_token":"`+strings.Repeat("a", 2<<20)+`"}`)
		return true
	}
	if f.Status == 0 {
		return false
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
	}
	code := "server_error"
	switch {
	case f.Status == http.StatusTooManyRequests:
		code = "rate_limited"
	case f.Status == http.StatusUnauthorized:
		code = map[Style]string{Mobi: "unauthorized_client"}[style]
		if code == "" {
			code = "invalid_client"
		}
	case f.Status < 500:
		code = "invalid_request"
	}
	writeError(w, &oauthError{f.Status, code, "injected fault"})
	return true
}

func statusOr(v, d int) int {
	if v != 0 {
		return v
	}
	return d
}

func (s *Server) issue(style Style, id, secret, grant, scope string) (map[string]any, *oauthError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok || c.Style != style {
		return nil, clientError(style)
	}
	if subtle.ConstantTimeCompare([]byte(secret), []byte(c.Secret)) != 1 {
		return nil, clientError(style)
	}
	if grant == "" {
		return nil, &oauthError{400, "invalid_request", "grant_type is required"}
	}
	if grant != "client_credentials" {
		if style == Mobi {
			return nil, &oauthError{415, "unsupported_grant_type", "only client_credentials is supported"}
		}
		return nil, &oauthError{400, "unsupported_grant_type", "only client_credentials is supported"}
	}
	if len(c.Scopes) > 0 {
		for _, sc := range strings.Fields(scope) {
			if !containsStr(c.Scopes, sc) {
				return nil, &oauthError{400, "invalid_scope", "scope not granted to this client"}
			}
		}
	}
	tok := newToken()
	life := map[Style]int{K2: 3600, Mobi: 3600, DOT: 36000}[style]
	if c.ExpiresIn != 0 && style != Mobi {
		life = c.ExpiresIn
	}
	if c.RevokeOnIssue {
		for t, info := range s.tokens {
			if info.clientID == id {
				delete(s.tokens, t)
			}
		}
	}
	s.tokens[tok] = issued{clientID: id, expiry: s.now().Add(time.Duration(life) * time.Second)}
	switch style {
	case Mobi:
		return map[string]any{"access_token": tok, "token_type": "Bearer"}, nil
	case K2:
		return map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": life, "created_at": s.now().Unix()}, nil
	default:
		if scope == "" {
			scope = strings.Join(c.Scopes, " ")
		}
		return map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": life, "scope": scope}, nil
	}
}

// clientError is what each style answers to unknown clients and wrong secrets.
func clientError(style Style) *oauthError {
	if style == Mobi {
		return &oauthError{401, "unauthorized_client", "client authentication failed"}
	}
	return &oauthError{401, "invalid_client", "Client authentication failed"}
}

func (s *Server) revoke(style Style) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		form, oe := s.parseForm(r)
		var id, secret string
		if oe == nil {
			id, secret, oe = credentials(style, r, form)
		}
		if oe != nil {
			writeError(w, oe)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.revokes[id]++
		c, ok := s.clients[id]
		if !ok || subtle.ConstantTimeCompare([]byte(secret), []byte(c.Secret)) != 1 {
			writeError(w, clientError(style))
			return
		}
		tok := form.Get("token")
		if tok == "" {
			writeError(w, &oauthError{400, "invalid_request", "token is required"})
			return
		}
		// RFC 7009 §2.2: unknown tokens are answered with 200 too.
		if info, ok := s.tokens[tok]; ok && info.clientID == id {
			delete(s.tokens, tok)
		}
		writeJSON(w, http.StatusOK, map[string]any{})
	}
}

// resource plays a resource server: 200 for a live bearer token, else 401.
func (s *Server) resource(w http.ResponseWriter, r *http.Request) {
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || !s.Valid(tok) {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

func (s *Server) controlClient(w http.ResponseWriter, r *http.Request) {
	var c Client
	if err := decodeStrict(r, &c); err != nil || c.ID == "" || (c.Secret == "" && c.Federated == nil) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want a client with client_id, style and client_secret (or federated: issuer, subject, audience)"})
		return
	}
	if f := c.Federated; f != nil && (f.Issuer == "" || f.Subject == "" || f.Audience == "" || c.Style != K2) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "a federated client is k2-style and names issuer, subject and audience"})
		return
	}
	switch c.Style {
	case K2, Mobi, DOT:
	default:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "style must be k2, mobi or dot"})
		return
	}
	s.AddClient(c)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) controlRotate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ClientID  string `json:"client_id"`
		NewSecret string `json:"new_secret"`
	}
	if err := decodeStrict(r, &req); err != nil || req.NewSecret == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want client_id and new_secret"})
		return
	}
	if err := s.Rotate(req.ClientID, req.NewSecret); err != nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "unknown client"})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) controlFault(w http.ResponseWriter, r *http.Request) {
	var f struct {
		Fault
		DelayMS int `json:"delay_ms"`
	}
	if err := decodeStrict(r, &f); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad fault"})
		return
	}
	if f.DelayMS > 0 {
		f.Delay = time.Duration(f.DelayMS) * time.Millisecond
	}
	s.SetFault(f.Fault)
	w.WriteHeader(http.StatusNoContent)
}

func decodeStrict(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

func writeError(w http.ResponseWriter, oe *oauthError) {
	if oe.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="sandbox"`)
	}
	writeJSON(w, oe.status, map[string]string{"error": oe.code, "error_description": oe.desc})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func newToken() string {
	b := make([]byte, 24)
	rand.Read(b)
	return "sbx_" + base64.RawURLEncoding.EncodeToString(b)
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// verifyFederated checks a federated client's assertion: type jwt-bearer, a
// JWS signed by a key in the trusted issuer's JWKS (fetched from
// {issuer}/.well-known/jwks.json), and iss, sub, aud and the validity times
// as the federation names them. An unsigned or expired token is refused.
func verifyFederated(ctx context.Context, f *Federation, form url.Values) error {
	if form.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || form.Get("client_assertion") == "" {
		return errors.New("want client_assertion_type jwt-bearer and a client_assertion")
	}
	set, err := jwk.Fetch(ctx, strings.TrimRight(f.Issuer, "/")+"/.well-known/jwks.json")
	if err != nil {
		return errors.New("the issuer's JWKS could not be fetched")
	}
	_, err = jwt.Parse([]byte(form.Get("client_assertion")), jwt.WithKeySet(set), jwt.WithValidate(true),
		jwt.WithIssuer(f.Issuer), jwt.WithSubject(f.Subject), jwt.WithAudience(f.Audience), jwt.WithAcceptableSkew(30*time.Second))
	if err != nil {
		return errors.New("the assertion is not a valid token of the trusted issuer, subject and audience")
	}
	return nil
}
