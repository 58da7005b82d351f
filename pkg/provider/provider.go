// Package provider parses and validates provider definitions: one client
// registration at one OAuth 2.0 authorization server (docs/design.md §2).
package provider

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/token-vendor/token-vendor/pkg/principal"
)

// Auth methods a definition may name.
const (
	AuthBasic = "client_secret_basic"
	AuthPost  = "client_secret_post"
	AuthQuery = "query"
	// AuthPrivateKeyJWT signs a client assertion (RFC 7523 §2.2) with
	// private_key (PEM) or kms_key_id (an asymmetric KMS key).
	AuthPrivateKeyJWT = "private_key_jwt"
	// AuthClientSecretJWT signs a client assertion with HMAC-SHA256 keyed
	// by client_secret (RFC 7523, OpenID Connect Core §9): the secret
	// never travels.
	AuthClientSecretJWT = "client_secret_jwt"
	// AuthAWSWebIdentity sends the vendor's own AWS-issued JWT (STS
	// GetWebIdentityToken) as the client assertion: no secret and no key.
	AuthAWSWebIdentity = "aws_web_identity"
	// AuthTLS and AuthSelfSignedTLS authenticate with a client certificate
	// (RFC 8705 §2.1, §2.2): client_certificate and client_key.
	AuthTLS           = "tls_client_auth"
	AuthSelfSignedTLS = "self_signed_tls_client_auth"
)

// DefaultMaxKeys and MaxMaxKeys bound max_keys.
const (
	DefaultMaxKeys = 100
	MaxMaxKeys     = 1000
)

// MinFetchRate is the smallest fetch_rate but 0 (no limit): one request a
// day. Much smaller, the interval between requests overflows a
// time.Duration (1e-12/s is 10^21 ns) and would wrap to no limit at all.
const MinFetchRate = 1.0 / 86400

// DefaultExpiresIn is the lifetime assumed when a token response has no usable expires_in.
const DefaultExpiresIn = 3600

// maxDefinitionBytes bounds what Parse reads; a definition is a few hundred bytes.
const maxDefinitionBytes = 64 << 10

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// Definition is a provider's registration. ClientSecret must never be logged:
// String and LogValue leave it out.
type Definition struct {
	Name                 string            `json:"-"`
	TokenURL             string            `json:"token_url"`
	ClientID             string            `json:"client_id"`
	ClientSecret         string            `json:"client_secret"`
	AuthMethod           string            `json:"auth_method,omitempty"`
	Scopes               []string          `json:"scopes,omitempty"`
	AllowedScopes        []string          `json:"allowed_scopes,omitempty"`
	ExtraParams          map[string]string `json:"extra_params,omitempty"`
	RevokeURL            string            `json:"revoke_url,omitempty"`
	DefaultExpiresIn     int64             `json:"default_expires_in,omitempty"`
	RefreshBeforeSeconds int64             `json:"refresh_before_seconds,omitempty"`
	// private_key_jwt: exactly one of KMSKeyID and PrivateKey (a secret,
	// like ClientSecret). SigningAlg RS256, PS256 or ES256 (default: the
	// key's); KeyID the JWS kid (default: the RFC 7638 thumbprint);
	// AssertionAudience the aud (default: token_url).
	KMSKeyID string `json:"kms_key_id,omitempty"`
	// SigningCertificate (private_key_jwt, optional) is the PEM certificate
	// of the signing key: assertions then carry its SHA-256 thumbprint
	// (x5t#S256) and, with AssertionX5T, its SHA-1 one (x5t), as Microsoft
	// Entra ID certificate credentials want.
	SigningCertificate string `json:"signing_certificate,omitempty"`
	// PublishKeys (private_key_jwt) are further public keys the JWKS route
	// serves beside the signing key's: PEM public keys or KMS key ids. A
	// rotation publishes the next key here first, then signs with it.
	PublishKeys       []string `json:"publish_keys,omitempty"`
	AssertionX5T      bool     `json:"assertion_x5t,omitempty"`
	PrivateKey        string   `json:"private_key,omitempty"`
	SigningAlg        string   `json:"signing_alg,omitempty"`
	KeyID             string   `json:"key_id,omitempty"`
	AssertionAudience string   `json:"assertion_audience,omitempty"`
	// tls_client_auth, self_signed_tls_client_auth: a PEM certificate
	// chain (leaf first) and its PEM private key (a secret).
	ClientCertificate string `json:"client_certificate,omitempty"`
	ClientKey         string `json:"client_key,omitempty"`
	// IdleAfterSeconds overrides IDLE_AFTER: a key not vended for this long
	// is no longer renewed (0: the deployment's default).
	IdleAfterSeconds int64 `json:"idle_after_seconds,omitempty"`
	// MaxKeys caps the distinct keys (scope set and target) cached for a
	// provider without allowed_scopes, with allowed_resources or
	// allowed_audiences, or whose allowed_scopes (and subsets of several
	// default resources/audiences) make more sets (2^n) than MaxKeys (0:
	// DefaultMaxKeys; ignored when those bound the keys below it).
	MaxKeys int `json:"max_keys,omitempty"`
	// aws_web_identity: the JWT's audience (default Entra's
	// api://AzureADTokenExchange), algorithm (RS256 or ES384) and life in
	// seconds (60-3600, default 300).
	WebIdentityAudience string `json:"web_identity_audience,omitempty"`
	WebIdentityAlg      string `json:"web_identity_signing_alg,omitempty"`
	WebIdentitySeconds  int    `json:"web_identity_duration_seconds,omitempty"`
	// Resources and Audiences are the target a token is asked for when the
	// caller names none (RFC 8707 resource, audience); AllowedResources and
	// AllowedAudiences are what callers may ask for (absent: nothing).
	Resources        []string `json:"resources,omitempty"`
	AllowedResources []string `json:"allowed_resources,omitempty"`
	Audiences        []string `json:"audiences,omitempty"`
	AllowedAudiences []string `json:"allowed_audiences,omitempty"`
	// MaxConcurrentFetches caps the refresher's concurrent token requests
	// to this provider (0: 4); FetchRate, when set, caps them per second.
	MaxConcurrentFetches int     `json:"max_concurrent_fetches,omitempty"`
	FetchRate            float64 `json:"fetch_rate,omitempty"`
	// AllowedCallers lists the IAM principals (ARN patterns, package
	// principal) that may have this provider's tokens; empty admits anyone
	// IAM lets reach the vendor. AdminCallers, when set, are the only ones
	// who may force a refresh or revoke (otherwise AllowedCallers' rule).
	AllowedCallers []string `json:"allowed_callers,omitempty"`
	AdminCallers   []string `json:"admin_callers,omitempty"`
	// DPoP (RFC 9449): token requests carry proofs signed by this key, held
	// as private_key_jwt's is: exactly one of DPoPKMSKeyID (an asymmetric
	// KMS key) and DPoPPrivateKey (PEM, a secret); DPoPSigningAlg PS256,
	// ES256 or RS256 (default: ES256 for EC, PS256 for RSA).
	DPoPKMSKeyID   string `json:"dpop_kms_key_id,omitempty"`
	DPoPPrivateKey string `json:"dpop_private_key,omitempty"`
	DPoPSigningAlg string `json:"dpop_signing_alg,omitempty"`
	// Issuer is the authorization server's issuer identifier: when set, a
	// client assertion's aud is it, as its sole value. Profile "fapi2"
	// enforces the FAPI 2.0 client rules at load.
	Issuer  string `json:"issuer,omitempty"`
	Profile string `json:"profile,omitempty"`

	allowed, admins []principal.Pattern
	fp              string // Fingerprint, computed once by Validate: it is on the L1 hot path
	dpopID          string // the DPoP key's identity in the fingerprint ("" without DPoP)
}

// FieldError reports which field of a definition is wrong and why. It never
// carries a field's value, so it is safe to log and to return to callers.
type FieldError struct {
	Provider string
	Field    string
	Reason   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("provider %q: %s", e.Provider, e.Reason)
	}
	return fmt.Sprintf("provider %q: field %s: %s", e.Provider, e.Field, e.Reason)
}

// ErrInvalidName is returned for names outside ^[a-z0-9][a-z0-9._-]{0,63}$.
var ErrInvalidName = errors.New("invalid provider name: want ^[a-z0-9][a-z0-9._-]{0,63}$")

// ValidName reports whether name is a well-formed provider name.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Parse decodes and validates one definition. Unknown fields are rejected so
// that a typo (say "client_secert") is reported instead of silently ignored.
// JSON syntax errors are reported by position only: encoding/json's messages
// can quote the offending input, which may be the secret.
func Parse(name string, data []byte) (*Definition, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidName, truncate(name, 80))
	}
	if len(data) > maxDefinitionBytes {
		return nil, &FieldError{Provider: name, Reason: fmt.Sprintf("definition larger than %d bytes", maxDefinitionBytes)}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d Definition
	if err := dec.Decode(&d); err != nil {
		return nil, &FieldError{Provider: name, Field: jsonField(err), Reason: jsonReason(err)}
	}
	if dec.More() {
		return nil, &FieldError{Provider: name, Reason: "trailing data after the JSON object"}
	}
	d.Name = name
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// jsonField names the field a decoding error is about, if encoding/json says.
func jsonField(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return te.Field
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
		return strings.Trim(strings.TrimPrefix(msg, "json: unknown field "), `"`)
	}
	return ""
}

func jsonReason(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return "must be a JSON " + te.Type.String()
	case errors.As(err, &se):
		return fmt.Sprintf("not valid JSON (syntax error at byte %d)", se.Offset)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field"
	case errors.Is(err, io.EOF):
		return "empty definition"
	default:
		return "not a valid JSON object"
	}
}

// Validate checks every field's rules and fills in defaults.
func (d *Definition) Validate() error {
	fe := func(field, reason string) error { return &FieldError{Provider: d.Name, Field: field, Reason: reason} }
	if !ValidName(d.Name) {
		return fmt.Errorf("%w: %q", ErrInvalidName, truncate(d.Name, 80))
	}
	if err := CheckEndpoint(d.TokenURL); err != nil {
		return fe("token_url", err.Error())
	}
	if d.RevokeURL != "" {
		if err := CheckEndpoint(d.RevokeURL); err != nil {
			return fe("revoke_url", err.Error())
		}
	}
	if d.ClientID == "" {
		return fe("client_id", "required")
	}
	if !printable(d.ClientID) {
		return fe("client_id", "must not contain control characters")
	}
	switch d.AuthMethod {
	case "":
		d.AuthMethod = AuthBasic // RFC 6749 §2.3.1: servers MUST support Basic.
	case AuthBasic, AuthPost, AuthQuery, AuthPrivateKeyJWT, AuthClientSecretJWT, AuthAWSWebIdentity, AuthTLS, AuthSelfSignedTLS:
	default:
		return fe("auth_method", "must be one of client_secret_basic, client_secret_post, query, client_secret_jwt, private_key_jwt, aws_web_identity, tls_client_auth, self_signed_tls_client_auth")
	}
	keyFields := map[string]string{"kms_key_id": d.KMSKeyID, "private_key": d.PrivateKey, "signing_alg": d.SigningAlg, "key_id": d.KeyID,
		"assertion_audience": d.AssertionAudience, "signing_certificate": d.SigningCertificate}
	certFields := map[string]string{"client_certificate": d.ClientCertificate, "client_key": d.ClientKey}
	only := func(fields map[string]string, method string) error {
		for name, v := range fields {
			if v != "" {
				return fe(name, "only with auth_method "+method)
			}
		}
		return nil
	}
	if d.AuthMethod != AuthAWSWebIdentity && (d.WebIdentityAudience != "" || d.WebIdentityAlg != "" || d.WebIdentitySeconds != 0) {
		return fe("web_identity_audience", "web_identity_* fields only with auth_method aws_web_identity")
	}
	if len(d.PublishKeys) > 0 && d.AuthMethod != AuthPrivateKeyJWT {
		return fe("publish_keys", "only with auth_method private_key_jwt")
	}
	switch d.AuthMethod {
	case AuthPrivateKeyJWT:
		if err := d.validateKeyAuth(fe); err != nil {
			return err
		}
		if err := only(certFields, "tls_client_auth or self_signed_tls_client_auth"); err != nil {
			return err
		}
	case AuthAWSWebIdentity:
		if d.ClientSecret != "" {
			return fe("client_secret", "not used with aws_web_identity (the point is to hold none); remove it")
		}
		if err := only(keyFields, "private_key_jwt"); err != nil {
			return err
		}
		if err := only(certFields, "tls_client_auth or self_signed_tls_client_auth"); err != nil {
			return err
		}
		if d.WebIdentityAudience != "" && (!printable(d.WebIdentityAudience) || len(d.WebIdentityAudience) > 1024) {
			return fe("web_identity_audience", "must be printable, at most 1024 bytes")
		}
		switch d.WebIdentityAlg {
		case "", "RS256", "ES384":
		default:
			return fe("web_identity_signing_alg", "must be RS256 or ES384")
		}
		if d.WebIdentitySeconds != 0 && (d.WebIdentitySeconds < 60 || d.WebIdentitySeconds > 3600) {
			return fe("web_identity_duration_seconds", "must be between 60 and 3600")
		}
		// The JWT is a bearer credential good at every application
		// federated to the vendor's role: it goes to the token endpoint's
		// origin only, never to a revocation endpoint elsewhere.
		if d.RevokeURL != "" && origin(d.RevokeURL) != origin(d.TokenURL) {
			return fe("revoke_url", "must be on token_url's host (scheme, host and port) with aws_web_identity: revocation sends the vendor's JWT, which another host could replay")
		}
	case AuthClientSecretJWT:
		if d.ClientSecret == "" {
			return fe("client_secret", "required (the HMAC key of client_secret_jwt)")
		}
		if len(d.ClientSecret) < 32 {
			return fe("client_secret", "at least 32 bytes for HS256 (RFC 7518 §3.2)")
		}
		if d.SigningAlg != "" && d.SigningAlg != "HS256" {
			return fe("signing_alg", "client_secret_jwt signs with HS256")
		}
		if d.AssertionAudience != "" && !printable(d.AssertionAudience) {
			return fe("assertion_audience", "must not contain control characters")
		}
		if err := only(map[string]string{"kms_key_id": d.KMSKeyID, "private_key": d.PrivateKey, "key_id": d.KeyID, "signing_certificate": d.SigningCertificate}, "private_key_jwt"); err != nil {
			return err
		}
		if err := only(certFields, "tls_client_auth or self_signed_tls_client_auth"); err != nil {
			return err
		}
	case AuthTLS, AuthSelfSignedTLS:
		if err := d.validateCertAuth(fe); err != nil {
			return err
		}
		if err := only(keyFields, "private_key_jwt"); err != nil {
			return err
		}
	default:
		if d.ClientSecret == "" {
			return fe("client_secret", "required")
		}
		if err := only(keyFields, "private_key_jwt"); err != nil {
			return err
		}
		if err := only(certFields, "tls_client_auth or self_signed_tls_client_auth"); err != nil {
			return err
		}
	}
	if !printable(d.ClientSecret) {
		return fe("client_secret", "must not contain control characters")
	}
	for _, f := range []struct {
		name   string
		scopes []string
	}{{"scopes", d.Scopes}, {"allowed_scopes", d.AllowedScopes}} {
		for _, s := range f.scopes {
			if !ValidScopeToken(s) {
				return fe(f.name, "each scope must be a non-empty RFC 6749 scope-token (no spaces, quotes or backslashes)")
			}
		}
	}
	if len(d.AllowedScopes) > 0 {
		if !subset(d.Scopes, d.AllowedScopes) {
			return fe("scopes", "default scopes must be within allowed_scopes")
		}
	}
	for k, v := range d.ExtraParams {
		switch k {
		case "grant_type", "client_id", "client_secret", "scope":
			return fe("extra_params", fmt.Sprintf("must not set %q", k))
		}
		if k == "" || !printable(k) || !printable(v) {
			return fe("extra_params", "keys must be non-empty and keys and values free of control characters")
		}
	}
	for _, f := range []struct {
		name, param       string
		defaults, allowed []string
		check             func(string) error
	}{
		{"resources", "resource", d.Resources, d.AllowedResources, checkResource},
		{"audiences", "audience", d.Audiences, d.AllowedAudiences, checkAudience},
	} {
		for _, list := range [][]string{f.defaults, f.allowed} {
			if len(list) > 100 {
				return fe(f.name, "at most 100 values")
			}
			for _, v := range list {
				if err := f.check(v); err != nil {
					return fe(f.name, err.Error())
				}
			}
		}
		if len(f.allowed) > 0 && !subset(f.defaults, f.allowed) {
			return fe(f.name, "defaults must be within allowed_"+f.name)
		}
		if _, clash := d.ExtraParams[f.param]; clash && len(f.defaults)+len(f.allowed) > 0 {
			return fe("extra_params", fmt.Sprintf("sets %q, which %s and allowed_%s decide", f.param, f.name, f.name))
		}
	}
	if d.DefaultExpiresIn < 0 || d.DefaultExpiresIn > 86400*366 {
		return fe("default_expires_in", "must be between 1 and 31622400 seconds")
	}
	if d.DefaultExpiresIn == 0 {
		d.DefaultExpiresIn = DefaultExpiresIn
	}
	if d.IdleAfterSeconds < 0 || d.IdleAfterSeconds > 86400*366 {
		return fe("idle_after_seconds", "must be between 0 and 31622400")
	}
	if d.MaxKeys < 0 || d.MaxKeys > MaxMaxKeys {
		return fe("max_keys", fmt.Sprintf("must be between 0 and %d", MaxMaxKeys))
	}
	if d.MaxKeys == 0 {
		d.MaxKeys = DefaultMaxKeys
	}
	if d.RefreshBeforeSeconds < 0 || d.RefreshBeforeSeconds > 86400*366 {
		return fe("refresh_before_seconds", "must be between 0 and 31622400 seconds")
	}
	if d.MaxConcurrentFetches < 0 || d.MaxConcurrentFetches > 64 {
		return fe("max_concurrent_fetches", "must be between 1 and 64 (0: the default, 4)")
	}
	if d.FetchRate < 0 || d.FetchRate > 1000 || math.IsNaN(d.FetchRate) || (d.FetchRate > 0 && d.FetchRate < MinFetchRate) {
		return fe("fetch_rate", "must be 0 (no limit) or between 1/86400 (one request a day) and 1000 requests per second")
	}
	var err error
	if d.allowed, err = patterns(d.Name, "allowed_callers", d.AllowedCallers); err != nil {
		return err
	}
	if d.admins, err = patterns(d.Name, "admin_callers", d.AdminCallers); err != nil {
		return err
	}
	if err := d.validateDPoP(fe); err != nil {
		return err
	}
	if err := d.validateProfile(fe); err != nil {
		return err
	}
	d.fp = d.fingerprint()
	return nil
}

// maxCallers bounds allowed_callers and admin_callers.
const maxCallers = 100

// patterns checks a list of caller ARN patterns; the error names the entry
// (an ARN is not a secret).
func patterns(provider, field string, entries []string) ([]principal.Pattern, error) {
	if entries != nil && len(entries) == 0 {
		return nil, &FieldError{Provider: provider, Field: field, Reason: "empty list: leave the field out to admit every caller, or list the principals"}
	}
	if len(entries) > maxCallers {
		return nil, &FieldError{Provider: provider, Field: field, Reason: fmt.Sprintf("at most %d entries", maxCallers)}
	}
	out := make([]principal.Pattern, 0, len(entries))
	for i, e := range entries {
		p, err := principal.ParsePattern(e)
		if err != nil {
			return nil, &FieldError{Provider: provider, Field: fmt.Sprintf("%s[%d]", field, i), Reason: fmt.Sprintf("%q: %v", truncate(e, 200), err)}
		}
		out = append(out, p)
	}
	return out, nil
}

// DefaultWebIdentityAudience is Microsoft Entra ID's audience for federated
// identity credentials.
const DefaultWebIdentityAudience = "api://AzureADTokenExchange"

// WebIdentity is aws_web_identity's audience, algorithm and duration, with
// defaults applied.
func (d *Definition) WebIdentity() (audience, alg string, seconds int) {
	audience, alg, seconds = d.WebIdentityAudience, d.WebIdentityAlg, d.WebIdentitySeconds
	if audience == "" {
		audience = DefaultWebIdentityAudience
	}
	if alg == "" {
		alg = "RS256"
	}
	if seconds == 0 {
		seconds = 300
	}
	return audience, alg, seconds
}

// Callers are the patterns admitting callers for an operation: admin_callers
// for operator operations when set, else allowed_callers. Nil admits anyone.
func (d *Definition) Callers(admin bool) []principal.Pattern {
	if admin && len(d.admins) > 0 {
		return d.admins
	}
	return d.allowed
}

// CheckEndpoint requires an absolute https URL, or http to a loopback host.
// The reason it returns does not echo the URL: some providers put
// credentials in query strings.
func CheckEndpoint(raw string) error {
	if raw == "" {
		return errors.New("required")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("must be an absolute URL")
	}
	if u.User != nil {
		return errors.New("must not contain user information")
	}
	if u.Fragment != "" {
		return errors.New("must not contain a fragment")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if IsLoopback(u.Hostname()) {
			return nil
		}
		return errors.New("must use https (http is allowed only for loopback hosts)")
	default:
		return errors.New("must use https")
	}
}

// origin is a URL's scheme, host and port, lower case, the port explicit.
func origin(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	scheme, port := strings.ToLower(u.Scheme), u.Port()
	if port == "" {
		port = map[string]string{"https": "443", "http": "80"}[scheme]
	}
	return scheme + "://" + strings.ToLower(u.Hostname()) + ":" + port
}

// IsLoopback reports whether host is localhost or a loopback IP address.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// String describes the definition without its secret.
func (d *Definition) String() string {
	return fmt.Sprintf("provider{name=%s token_url=%s auth_method=%s}", d.Name, d.TokenURL, d.AuthMethod)
}

// Fingerprint identifies the registration (client id and extra params) a token
// belongs to, so a rotated client id never serves the old registration's token.
// It is a hash: client ids and audiences need not appear in table keys.
// Definitions are treated as immutable once validated.
func (d *Definition) Fingerprint() string {
	if d.fp != "" {
		return d.fp
	}
	return d.fingerprint()
}

func (d *Definition) fingerprint() string {
	h := sha256.New()
	// The authorization server and the way the client authenticates belong
	// to the registration: one client id at another tenant's token_url is
	// another client whose tokens another audience accepts.
	fmt.Fprintf(h, "%s\x00%s\x00%s", d.ClientID, d.TokenURL, d.AuthMethod)
	keys := make([]string, 0, len(d.ExtraParams))
	for k := range d.ExtraParams {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "\x00%s\x00%s", k, d.ExtraParams[k])
	}
	if d.dpopID != "" {
		// A DPoP-bound token is the key's: another key is another
		// registration (absent without DPoP, so other keys are unchanged).
		fmt.Fprintf(h, "\x00dpop\x00%s", d.dpopID)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// SameCredentials reports whether two definitions authenticate identically.
func (d *Definition) SameCredentials(o *Definition) bool {
	return d.ClientID == o.ClientID && d.ClientSecret == o.ClientSecret && d.AuthMethod == o.AuthMethod && d.TokenURL == o.TokenURL &&
		d.PrivateKey == o.PrivateKey && d.KMSKeyID == o.KMSKeyID && d.KeyID == o.KeyID && d.SigningAlg == o.SigningAlg &&
		d.ClientCertificate == o.ClientCertificate && d.ClientKey == o.ClientKey &&
		d.DPoPKMSKeyID == o.DPoPKMSKeyID && d.DPoPPrivateKey == o.DPoPPrivateKey && d.DPoPSigningAlg == o.DPoPSigningAlg
}

// UsesCertificate reports whether the registration authenticates with a
// client certificate (RFC 8705).
func (d *Definition) UsesCertificate() bool {
	return d.AuthMethod == AuthTLS || d.AuthMethod == AuthSelfSignedTLS
}

// validateCertAuth checks a certificate registration; errors never quote
// the key.
func (d *Definition) validateCertAuth(fe func(field, reason string) error) error {
	if d.ClientSecret != "" {
		return fe("client_secret", "not used with "+d.AuthMethod+"; remove it")
	}
	if d.ClientCertificate == "" {
		return fe("client_certificate", "required (PEM certificate chain, leaf first)")
	}
	if d.ClientKey == "" {
		return fe("client_key", "required (PEM private key of the certificate)")
	}
	cert, err := tls.X509KeyPair([]byte(d.ClientCertificate), []byte(d.ClientKey))
	if err != nil {
		return fe("client_certificate", "certificate and client_key do not form a usable pair")
	}
	if cert.Leaf != nil && time.Now().After(cert.Leaf.NotAfter) {
		return fe("client_certificate", "expired on "+cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// validateKeyAuth checks a private_key_jwt registration; errors never
// quote the key.
func (d *Definition) validateKeyAuth(fe func(field, reason string) error) error {
	if d.ClientSecret != "" {
		return fe("client_secret", "not used with private_key_jwt; remove it")
	}
	switch {
	case d.KMSKeyID == "" && d.PrivateKey == "":
		return fe("kms_key_id", "private_key_jwt needs kms_key_id (an asymmetric KMS key) or private_key (PEM)")
	case d.KMSKeyID != "" && d.PrivateKey != "":
		return fe("private_key", "give kms_key_id or private_key, not both")
	case d.PrivateKey != "":
		// Parsed now, so a key that cannot sign is refused when the
		// definition is loaded, not at its first fetch.
		k, err := ParsePrivateKey(d.PrivateKey)
		if err != nil {
			return fe("private_key", err.Error())
		}
		if _, isEC := k.(*ecdsa.PrivateKey); (isEC && d.SigningAlg != "" && d.SigningAlg != "ES256") || (!isEC && d.SigningAlg == "ES256") {
			return fe("signing_alg", "does not fit the key (RSA: RS256 or PS256; EC P-256: ES256)")
		}
	case !printable(d.KMSKeyID) || strings.ContainsAny(d.KMSKeyID, " \t"):
		return fe("kms_key_id", "must be a KMS key id, ARN or alias")
	}
	switch d.SigningAlg {
	case "", "RS256", "PS256", "ES256":
	default:
		return fe("signing_alg", "must be RS256, PS256 or ES256")
	}
	if len(d.PublishKeys) > 10 {
		return fe("publish_keys", "at most 10 keys")
	}
	for i, p := range d.PublishKeys {
		if strings.Contains(p, "PRIVATE KEY") {
			return fe(fmt.Sprintf("publish_keys[%d]", i), "is a private key; publish keys' public halves (PEM PUBLIC KEY) or KMS key ids")
		}
		if strings.Contains(p, "-----BEGIN") {
			if _, err := ParsePublicKey(p); err != nil {
				return fe(fmt.Sprintf("publish_keys[%d]", i), err.Error())
			}
		} else if p == "" || !printable(p) || strings.ContainsAny(p, " \t") {
			return fe(fmt.Sprintf("publish_keys[%d]", i), "must be a PEM public key or a KMS key id, ARN or alias")
		}
	}
	if d.SigningCertificate != "" {
		cert, err := ParseCertificate(d.SigningCertificate)
		if err != nil {
			return fe("signing_certificate", err.Error())
		}
		if d.PrivateKey != "" {
			if k, err := ParsePrivateKey(d.PrivateKey); err == nil && !SamePublicKey(k.Public(), cert.PublicKey) {
				return fe("signing_certificate", "is not the certificate of private_key (another public key)")
			}
		}
	} else if d.AssertionX5T {
		return fe("assertion_x5t", "needs signing_certificate")
	}
	if d.AssertionAudience != "" && !printable(d.AssertionAudience) {
		return fe("assertion_audience", "must not contain control characters")
	}
	if d.KeyID != "" && !printable(d.KeyID) {
		return fe("key_id", "must not contain control characters")
	}
	return nil
}

// ParsePublicKey reads a PEM public key (PKIX): RSA of at least 2048 bits
// or EC P-256.
func ParsePublicKey(s string) (crypto.PublicKey, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("must be a PEM public key (PUBLIC KEY)")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, errors.New("not a parsable public key")
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return nil, fmt.Errorf("RSA key of %d bits; at least %d are required", k.N.BitLen(), MinRSABits)
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, errors.New("EC keys must be on P-256 (ES256)")
		}
	default:
		return nil, errors.New("want an RSA or EC P-256 key")
	}
	return pub, nil
}

// ParseCertificate reads one PEM certificate (the first of a chain).
func ParseCertificate(s string) (*x509.Certificate, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("must be a PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, errors.New("not a parsable X.509 certificate")
	}
	return cert, nil
}

// SamePublicKey reports whether two public keys are the same key.
func SamePublicKey(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// MinRSABits is the smallest RSA key accepted for signing (RFC 7518 §3.3).
const MinRSABits = 2048

// ParsePrivateKey reads an unencrypted PEM RSA (at least 2048 bits) or EC
// P-256 private key (PKCS #8, PKCS #1 or SEC 1). Errors never quote the key.
func ParsePrivateKey(s string) (crypto.Signer, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil || !strings.HasSuffix(block.Type, "PRIVATE KEY") {
		return nil, errors.New("must be a PEM private key (PKCS #8, PKCS #1 or SEC 1)")
	}
	//lint:ignore SA1019 detecting (not decrypting) legacy encrypted PEM
	if block.Type == "ENCRYPTED PRIVATE KEY" || x509.IsEncryptedPEMBlock(block) {
		return nil, errors.New("is encrypted; store it unencrypted in the secret (Secrets Manager encrypts it at rest)")
	}
	var key any
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		key = k
	} else if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		key = k
	} else if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		key = k
	} else {
		return nil, errors.New("not a PKCS #8, PKCS #1 or SEC 1 private key")
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < MinRSABits {
			return nil, fmt.Errorf("RSA key of %d bits; at least %d are required", k.N.BitLen(), MinRSABits)
		}
		return k, nil
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, errors.New("EC keys must be on P-256 (ES256)")
		}
		return k, nil
	}
	return nil, errors.New("want an RSA or EC P-256 key")
}

func subset(a, b []string) bool {
	for _, s := range a {
		found := false
		for _, t := range b {
			if s == t {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
