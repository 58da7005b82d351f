package upstream

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Token is a successful token response, with expiry already resolved.
type Token struct {
	AccessToken string
	TokenType   string
	// JKT is the thumbprint of the DPoP key a DPoP-bound token is bound
	// to (RFC 9449 §6); "" for any other token.
	JKT string
	// Scope is the scope the provider granted if it said, else the one requested.
	Scope string
	// Lifetime is the resolved expires_in (defaulted and capped).
	Lifetime time.Duration
	// IssuedAt is when the request was sent; Expiry = IssuedAt + Lifetime, so a
	// slow response never makes a token look longer-lived than it is.
	IssuedAt time.Time
	Expiry   time.Time
}

// TokenTypeDPoP is a DPoP-bound token's token_type (RFC 9449 §5).
const TokenTypeDPoP = "DPoP"

// Limits used by ParseTokenResponse.
type ExpiryRules struct {
	DefaultExpiresIn int64 // seconds assumed when expires_in is missing, null, zero or negative
	MaxCacheSeconds  int64 // cap on any lifetime
}

// maxTokenLen bounds an access token; real ones (JWTs included) are far smaller.
const maxTokenLen = 64 << 10

// permanentCodes are RFC 6749 §5.2 codes that will not change on retry.
var permanentCodes = map[string]bool{
	"invalid_request":        true,
	"invalid_client":         true,
	"invalid_grant":          true,
	"unauthorized_client":    true,
	"unsupported_grant_type": true,
	"invalid_scope":          true,
	"access_denied":          true,
}

type tokenJSON struct {
	AccessToken json.RawMessage `json:"access_token"`
	TokenType   json.RawMessage `json:"token_type"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
	Scope       json.RawMessage `json:"scope"`
}

type errorJSON struct {
	Error            json.RawMessage `json:"error"`
	ErrorDescription json.RawMessage `json:"error_description"`
}

// ParseTokenResponse interprets one token endpoint response. It is pure, so it
// is fuzzed directly. The credentials in redact are removed from any text
// kept from the body.
func ParseTokenResponse(provider string, status int, header http.Header, body []byte, issuedAt time.Time, requestedScope string, rules ExpiryRules, redact ...string) (*Token, error) {
	if status < 200 || status > 299 {
		return nil, errorFromResponse(provider, status, header, body, issuedAt, redact...)
	}
	bad := func(desc string) error {
		return &RetrieveError{Provider: provider, Kind: Transient, StatusCode: status, Code: "invalid_response", Description: desc}
	}
	var tj tokenJSON
	if err := json.Unmarshal(body, &tj); err != nil {
		return nil, bad("success response is not a JSON object")
	}
	access, ok := jsonString(tj.AccessToken)
	if !ok || access == "" {
		return nil, bad("access_token missing or not a string")
	}
	if len(access) > maxTokenLen || !visibleASCII(access) {
		return nil, bad("access_token has characters or a length no bearer token has")
	}
	tokenType, ok := jsonString(tj.TokenType)
	if !ok || tokenType == "" {
		return nil, bad("token_type missing or not a string")
	}
	if strings.EqualFold(tokenType, "bearer") {
		tokenType = "Bearer"
	} else if strings.EqualFold(tokenType, TokenTypeDPoP) {
		tokenType = TokenTypeDPoP
	} else if len(tokenType) > 64 || !visibleASCII(tokenType) {
		return nil, bad("token_type is not a plain word")
	}
	scope := requestedScope
	if s, ok := jsonString(tj.Scope); ok && s != "" && visibleASCII(strings.ReplaceAll(s, " ", "")) {
		scope = s
	}
	life := ResolveExpiresIn(tj.ExpiresIn, rules)
	return &Token{
		AccessToken: access,
		TokenType:   tokenType,
		Scope:       scope,
		Lifetime:    life,
		IssuedAt:    issuedAt,
		Expiry:      issuedAt.Add(life),
	}, nil
}

// ResolveExpiresIn applies docs/design.md §3.1: a number or numeric string is
// used; missing, null, zero, negative or unparsable means the default;
// anything above MaxCacheSeconds is capped, so nothing is cached forever.
func ResolveExpiresIn(raw json.RawMessage, r ExpiryRules) time.Duration {
	def := r.DefaultExpiresIn
	if def <= 0 {
		def = 3600
	}
	max := r.MaxCacheSeconds
	if max <= 0 {
		max = 86400
	}
	secs := float64(def)
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			raw = []byte(strings.TrimSpace(s))
		}
	}
	if f, err := strconv.ParseFloat(string(raw), 64); err == nil && f >= 1 && !math.IsInf(f, 0) {
		secs = math.Floor(f)
	}
	if secs > float64(max) {
		secs = float64(max)
	}
	return time.Duration(secs) * time.Second
}

// errorFromResponse classifies a failed answer. redact lists every
// credential the request carried (client secret, the token being revoked):
// providers that echo what they received must not get it into our errors.
func errorFromResponse(provider string, status int, header http.Header, body []byte, now time.Time, redact ...string) *RetrieveError {
	e := &RetrieveError{Provider: provider, StatusCode: status}
	var ej errorJSON
	if json.Unmarshal(body, &ej) == nil {
		if code, ok := jsonString(ej.Error); ok && isErrorCode(code) && sanitize(code, redact...) == code {
			e.Code = code
		}
		if d, ok := jsonString(ej.ErrorDescription); ok {
			e.Description = sanitize(d, redact...)
		}
	}
	switch {
	case status == http.StatusTooManyRequests:
		e.Kind = RateLimited
		if e.Code == "" {
			e.Code = "rate_limited"
		}
	case status >= 500, status == http.StatusRequestTimeout:
		e.Kind = Transient
	case e.Code == "temporarily_unavailable" || e.Code == "server_error" || e.Code == "slow_down",
		e.Code == "use_dpop_nonce": // a nonce that rotated between our two tries: the next attempt has the newest
		e.Kind = Transient
	default:
		e.Kind = Permanent
	}
	if e.Code == "" {
		e.Code = statusCode(status)
	}
	if permanentCodes[e.Code] && e.Kind != RateLimited && status < 500 {
		e.Kind = Permanent
	}
	e.RetryAfter = ParseRetryAfter(header.Get("Retry-After"), now)
	return e
}

// statusCode names a bare status the way RFC 6749 would have, where it can.
func statusCode(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid_request"
	case http.StatusUnauthorized:
		return "invalid_client"
	}
	if status >= 300 && status < 400 {
		return "unexpected_redirect"
	}
	return "http_" + strconv.Itoa(status)
}

// maxRetryAfter caps what a provider can make us wait.
const maxRetryAfter = time.Hour

// ParseRetryAfter reads delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	if d < 0 {
		return 0
	}
	if d > maxRetryAfter {
		return maxRetryAfter
	}
	return d
}

func jsonString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// isErrorCode accepts RFC 6749 §5.2 error characters, bounded in length, so a
// provider cannot smuggle arbitrary text into our logs through the code.
func isErrorCode(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x22 || c == 0x5c || c > 0x7e {
			return false
		}
	}
	return true
}

func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// sanitize keeps a short printable description with every credential in
// redact removed, in the forms servers echo them: raw, form- or
// path-encoded, or inside base64 (an echoed Authorization: Basic header).
func sanitize(s string, redact ...string) string {
	s = redactCredentials(s, redact)
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s) && len(b) < 200; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b = append(b, c)
		}
	}
	return string(b)
}

func redactCredentials(s string, redact []string) string {
	for _, secret := range redact {
		if secret == "" {
			continue
		}
		for _, form := range []string{secret, url.QueryEscape(secret), url.PathEscape(secret)} {
			s = strings.ReplaceAll(s, form, "[REDACTED]")
		}
	}
	s = base64Runs.ReplaceAllStringFunc(s, func(run string) string {
		if decoded, ok := decodeBase64(run); ok && containsAny(decoded, redact) {
			return "[REDACTED]"
		}
		return run
	})
	return s
}

// base64Runs finds what could be base64 of a credential (8 characters and up).
var base64Runs = regexp.MustCompile(`[A-Za-z0-9+/_-]{8,}={0,2}`)

func decodeBase64(s string) (string, bool) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return string(b), true
		}
	}
	return "", false
}

func containsAny(s string, secrets []string) bool {
	for _, secret := range secrets {
		if secret == "" {
			continue
		}
		for _, form := range []string{secret, url.QueryEscape(secret)} {
			if strings.Contains(s, form) {
				return true
			}
		}
	}
	return false
}
