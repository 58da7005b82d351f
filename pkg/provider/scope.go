package provider

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
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

// Key identifies one cached token: provider, registration, scope set and
// target (resource indicators and audiences).
type Key struct {
	Provider string
	Scopes   []string
	Target   Target
	// PK is the DynamoDB partition key: token#{provider}#{fingerprint}#{tail},
	// the tail spelling the normalized request one-to-one (KeyForTarget).
	PK string
}

// Scope returns the normalized, space-separated scope string.
func (k Key) Scope() string { return strings.Join(k.Scopes, " ") }

// maxTailInKey is the longest readable tail written into a key; a longer
// one is keyed by its digest, so keys stay short and the key-count record
// listing up to 1000 of them stays far below DynamoDB's 400 KB item limit
// (the scope itself is in the record's scope attribute, the target in
// resource and audience).
const maxTailInKey = 128

// KeyFor builds the cache key for normalized scopes and no target.
func (d *Definition) KeyFor(scopes []string) Key { return d.KeyForTarget(scopes, Target{}) }

// KeyForTarget builds the cache key for normalized scopes and target.
//
// The tail is injective: two requests that normalize differently never
// share a key, so no caller can spell a request that reads, poisons or
// plants a remembered refusal on another request's token. Scope tokens may
// contain '#', ':' and '=' (RFC 6749 §3.3), so the tail is built from what
// they cannot contain: '"' opens each part, tagged s= (scopes), r=
// (resources), a= (audiences), and values are joined by spaces:
//
//	"s=read write"r=https://api.example/b"a=ledger
//
// A value that could break that reading (empty, or with a space or '"',
// possible in a resource or an audience) or a tail longer than
// maxTailInKey is keyed instead by "h= and 32 hex digits of the SHA-256 of
// the length-prefixed tuple (scopes, resources, audiences). Every tail
// starts with '"', which no key before this spelling had (a scope token
// cannot start with it), so old keys never alias new ones.
func (d *Definition) KeyForTarget(scopes []string, t Target) Key {
	return Key{
		Provider: d.Name,
		Scopes:   scopes,
		Target:   t,
		PK:       "token#" + d.Name + "#" + d.Fingerprint() + "#" + keyTail(scopes, t),
	}
}

func keyTail(scopes []string, t Target) string {
	parts := []struct {
		tag  string
		vals []string
	}{{"s=", scopes}, {"r=", t.Resources}, {"a=", t.Audiences}}
	var b strings.Builder
	readable := true
	for i, p := range parts {
		if i > 0 && len(p.vals) == 0 {
			continue // no target: the part is left out (scopes always have theirs)
		}
		b.WriteString(`"` + p.tag)
		for j, v := range p.vals {
			if v == "" || strings.ContainsAny(v, " \"") {
				readable = false
			}
			if j > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(v)
		}
	}
	if readable && b.Len() <= maxTailInKey {
		return b.String()
	}
	h := sha256.New()
	for _, p := range parts {
		h.Write(binary.AppendUvarint(nil, uint64(len(p.vals))))
		for _, v := range p.vals {
			h.Write(binary.AppendUvarint(nil, uint64(len(v))))
			h.Write([]byte(v))
		}
	}
	return `"h=` + hex.EncodeToString(h.Sum(nil)[:16])
}

// Target is what a token is for beyond its scopes: RFC 8707 resource
// indicators and audiences (as Auth0, Entra and AWS's credential broker
// take them), each normalized like scopes.
type Target struct {
	Resources, Audiences []string
}

// ErrTargetNotAllowed is wrapped when a requested resource or audience is
// not among the definition's allowed ones.
var ErrTargetNotAllowed = errors.New("resource or audience not allowed")

// maxTargetValues bounds the resources or audiences of one request.
const maxTargetValues = 10

// ResolveTarget turns a caller's space-separated resource and audience
// strings into the target for this provider: the definition's defaults when
// none is asked for, and an error wrapping ErrTargetNotAllowed (naming the
// value) for anything neither a default nor in allowed_resources /
// allowed_audiences.
func (d *Definition) ResolveTarget(resource, audience string) (Target, error) {
	var t Target
	for _, f := range []struct {
		param           string
		raw             string
		defaults, allow []string
		dst             *[]string
		check           func(string) error
	}{
		{"resource", resource, d.Resources, d.AllowedResources, &t.Resources, checkResource},
		{"audience", audience, d.Audiences, d.AllowedAudiences, &t.Audiences, checkAudience},
	} {
		vals, err := targetValues(f.param, f.raw, f.check)
		if err != nil {
			return Target{}, err
		}
		if len(vals) == 0 {
			vals = normalized(f.defaults)
		} else {
			for _, v := range vals {
				// The definition's own defaults are always allowed:
				// naming one is asking for what no target gets.
				if !contains(f.allow, v) && !contains(f.defaults, v) {
					return Target{}, fmt.Errorf("%w: %s %q is not in allowed_%ss of provider %q", ErrTargetNotAllowed, f.param, truncateValue(v), f.param, d.Name)
				}
			}
		}
		*f.dst = vals
	}
	return t, nil
}

func targetValues(param, raw string, check func(string) error) ([]string, error) {
	if len(raw) > maxScopeLen {
		return nil, fmt.Errorf("%w: %s longer than %d bytes", ErrBadScope, param, maxScopeLen)
	}
	vals := strings.Fields(raw)
	if len(vals) > maxTargetValues {
		return nil, fmt.Errorf("%w: at most %d values of %s", ErrBadScope, maxTargetValues, param)
	}
	for _, v := range vals {
		if err := check(v); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrBadScope, param, err)
		}
	}
	return normalized(vals), nil
}

func normalized(vals []string) []string {
	out := append([]string(nil), vals...)
	sort.Strings(out)
	return compact(out)
}

// checkResource: an absolute URI without a fragment (RFC 8707 §2).
func checkResource(v string) error {
	u, err := url.Parse(v)
	if err != nil || u.Scheme == "" || (u.Host == "" && u.Opaque == "") || u.Fragment != "" || strings.Contains(v, "#") || !printable(v) {
		return errors.New("each resource must be an absolute URI without a fragment")
	}
	return nil
}

// checkAudience: printable, no spaces (space separates values).
func checkAudience(v string) error {
	if v == "" || !printable(v) || strings.ContainsAny(v, " \"") {
		return errors.New("each audience must be printable, without spaces or quotes")
	}
	return nil
}

func truncateValue(v string) string { return truncate(v, 120) }

// ErrNotFound is wrapped by provider sources when no definition has the name.
var ErrNotFound = errors.New("unknown provider")

// ErrSourceUnavailable is wrapped by provider sources when the store of
// definitions (Secrets Manager) cannot be read right now.
var ErrSourceUnavailable = errors.New("provider definitions unavailable")
