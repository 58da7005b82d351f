package provider

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrScopeNotAllowed is wrapped by Resolve when a requested scope is outside allowed_scopes.
var ErrScopeNotAllowed = errors.New("scope not allowed")

// ErrKeyLimit is wrapped when a provider without allowed_scopes already has
// max_keys distinct scope sets cached and a new one is asked for.
var ErrKeyLimit = errors.New("key limit reached")

// ErrBadScope is wrapped by Resolve when a scope string is malformed.
var ErrBadScope = errors.New("invalid scope")

// maxScopeLen bounds a requested scope string.
const maxScopeLen = 1024

// ValidScopeToken reports whether s is an RFC 6749 §3.3 scope-token:
// 1*( %x21 / %x23-5B / %x5D-7E ).
func ValidScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c == 0x22 || c == 0x5c || c > 0x7e {
			return false
		}
	}
	return true
}

// NormalizeScope splits a space-separated scope string, drops duplicates and
// sorts, so "write read read" and "read write" name the same token.
func NormalizeScope(raw string) ([]string, error) {
	if len(raw) > maxScopeLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrBadScope, maxScopeLen)
	}
	fields := strings.Split(raw, " ")
	out := make([]string, 0, len(fields))
	for _, f := range fields {
		if f == "" {
			continue // tolerate doubled or edge spaces
		}
		if !ValidScopeToken(f) {
			return nil, fmt.Errorf("%w: scope tokens may contain only printable ASCII other than space, '\"' and '\\'", ErrBadScope)
		}
		out = append(out, f)
	}
	sort.Strings(out)
	return compact(out), nil
}

func compact(s []string) []string {
	if len(s) < 2 {
		return s
	}
	j := 1
	for i := 1; i < len(s); i++ {
		if s[i] != s[j-1] {
			s[j] = s[i]
			j++
		}
	}
	return s[:j]
}

// Resolve turns a caller's raw scope string into the normalized scope set for
// this provider: the default scopes when none is asked for, and an error
// wrapping ErrScopeNotAllowed for anything outside allowed_scopes.
func (d *Definition) Resolve(raw string) ([]string, error) {
	scopes, err := NormalizeScope(raw)
	if err != nil {
		return nil, err
	}
	if len(scopes) == 0 {
		scopes, _ = NormalizeScope(strings.Join(d.Scopes, " "))
	}
	if len(d.AllowedScopes) > 0 {
		for _, s := range scopes {
			if !contains(d.AllowedScopes, s) {
				return nil, fmt.Errorf("%w: %q is not in allowed_scopes of provider %q", ErrScopeNotAllowed, s, d.Name)
			}
		}
	}
	return scopes, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Key identifies one cached token: provider, registration and scope set.
type Key struct {
	Provider string
	Scopes   []string
	// PK is the DynamoDB partition key: token#{provider}#{fingerprint}#{scope}.
	PK string
}

// Scope returns the normalized, space-separated scope string.
func (k Key) Scope() string { return strings.Join(k.Scopes, " ") }

// maxScopeInKey is the longest scope set written into a key as is; a
// longer one is keyed by its digest, so keys stay short and the key-count
// record listing up to 1000 of them stays far below DynamoDB's 400 KB
// item limit (the scope itself is in the record's scope attribute).
const maxScopeInKey = 128

// KeyFor builds the cache key for normalized scopes.
func (d *Definition) KeyFor(scopes []string) Key {
	scope := strings.Join(scopes, " ")
	if len(scope) > maxScopeInKey {
		sum := sha256.Sum256([]byte(scope))
		scope = "sha256:" + hex.EncodeToString(sum[:16])
	}
	return Key{
		Provider: d.Name,
		Scopes:   scopes,
		PK:       "token#" + d.Name + "#" + d.Fingerprint() + "#" + scope,
	}
}

// ErrNotFound is wrapped by provider sources when no definition has the name.
var ErrNotFound = errors.New("unknown provider")

// ErrSourceUnavailable is wrapped by provider sources when the store of
// definitions (Secrets Manager) cannot be read right now.
var ErrSourceUnavailable = errors.New("provider definitions unavailable")
