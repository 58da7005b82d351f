package provider

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// keyDef is a registration for the key tests.
var keyDef = &Definition{Name: "p", TokenURL: "https://idp.example/token", ClientID: "c", ClientSecret: "s"}

// normalizedRequest is what a request normalizes to, before the key: the
// key must be a function of exactly this, one-to-one.
type normalizedRequest struct {
	scopes []string
	target Target
}

func (r normalizedRequest) equal(o normalizedRequest) bool {
	return slices.Equal(r.scopes, o.scopes) && slices.Equal(r.target.Resources, o.target.Resources) && slices.Equal(r.target.Audiences, o.target.Audiences)
}

// normalize parses raw request fields as the vendor does (scopes split,
// deduplicated and sorted; resources and audiences checked and normalized),
// without the allowed lists, which decide admission, not the key.
func normalize(scope, resource, audience string) (normalizedRequest, bool) {
	s, err := NormalizeScope(scope)
	if err != nil {
		return normalizedRequest{}, false
	}
	r, err := targetValues("resource", resource, checkResource)
	if err != nil {
		return normalizedRequest{}, false
	}
	a, err := targetValues("audience", audience, checkAudience)
	if err != nil {
		return normalizedRequest{}, false
	}
	return normalizedRequest{scopes: s, target: Target{Resources: r, Audiences: a}}, true
}

// TestKeyOneSpellingPerRequest: scope tokens may contain '#', ':' and '='
// (RFC 6749 §3.3), so a key that joins scopes and targets with them, or
// stands a digest in for a long tail as "sha256:<hex>", gives two requests
// one key. Before the fix, scope "read#r=https://api.b" had the key of
// scope "read" with resource https://api.b, and the single scope
// "sha256:<hex>" the key of a 30-scope set.
func TestKeyOneSpellingPerRequest(t *testing.T) {
	var many []string
	for i := range 30 {
		many = append(many, fmt.Sprintf("scope.%02d", i))
	}
	sum := sha256.Sum256([]byte(strings.Join(many, " ")))
	for _, c := range []struct {
		name string
		a, b [3]string
	}{
		{"scope spelling a resource", [3]string{"read", "https://api.b", ""}, [3]string{"read#r=https://api.b", "", ""}},
		{"scope spelling an audience", [3]string{"read", "", "ledger"}, [3]string{"read#a=ledger", "", ""}},
		{"scope spelling both", [3]string{"read", "https://api.b", "ledger"}, [3]string{"read#r=https://api.b#a=ledger", "", ""}},
		{"scope spelling the digest of a long set", [3]string{strings.Join(many, " "), "", ""}, [3]string{"sha256:" + hex.EncodeToString(sum[:16]), "", ""}},
		{"empty scope and a target", [3]string{"", "https://api.b", ""}, [3]string{"#r=https://api.b", "", ""}},
	} {
		ra, _ := normalize(c.a[0], c.a[1], c.a[2])
		rb, ok := normalize(c.b[0], c.b[1], c.b[2])
		if !ok {
			t.Fatalf("%s: %q is a valid request", c.name, c.b)
		}
		ka, kb := keyDef.KeyForTarget(ra.scopes, ra.target), keyDef.KeyForTarget(rb.scopes, rb.target)
		if ka.PK == kb.PK {
			t.Errorf("%s: %q and %q share the key %q", c.name, c.a, c.b, ka.PK)
		}
	}
}

// TestKeyShortAndReadable: keys stay short (the key-count record lists up
// to 1000 of them) whatever the request, and start with token#{provider}#
// (listing and the fault proxy select by that prefix).
func TestKeyShortAndReadable(t *testing.T) {
	long := strings.Repeat("x", 1000)
	for _, r := range []normalizedRequest{
		{scopes: []string{long}},
		{scopes: []string{"read"}, target: Target{Resources: []string{"https://api.example/" + long}}},
		{scopes: []string{"a\"b"}},
		{},
	} {
		k := keyDef.KeyForTarget(r.scopes, r.target)
		if len(k.PK) > 200 || !strings.HasPrefix(k.PK, "token#p#"+keyDef.Fingerprint()+"#") {
			t.Errorf("key %q (%d bytes)", k.PK, len(k.PK))
		}
	}
	if k := keyDef.KeyForTarget([]string{"read", "write"}, Target{Audiences: []string{"ledger"}}); !strings.Contains(k.PK, "read write") || !strings.Contains(k.PK, "ledger") {
		t.Errorf("a short key keeps its scopes and target readable: %q", k.PK)
	}
}

// FuzzKeyInjective: two requests normalizing differently never share a
// key, and the same normalized request always has the same key.
func FuzzKeyInjective(f *testing.F) {
	f.Add("read", "https://api.b", "", "read#r=https://api.b", "", "")
	f.Add("read", "", "ledger", "read#a=ledger", "", "")
	f.Add("", "https://api.b", "x", "#r=https://api.b#a=x", "", "")
	f.Add("write read", "", "", "read write read", "", "")
	f.Add("a", "https://api.b", "", "a", "", "\"r=https://api.b")
	f.Add(strings.Repeat("s ", 60), "", "", "sha256:0123456789abcdef0123456789abcdef", "", "")
	f.Fuzz(func(t *testing.T, s1, r1, a1, s2, r2, a2 string) {
		n1, ok1 := normalize(s1, r1, a1)
		n2, ok2 := normalize(s2, r2, a2)
		if !ok1 || !ok2 {
			return
		}
		k1, k2 := keyDef.KeyForTarget(n1.scopes, n1.target), keyDef.KeyForTarget(n2.scopes, n2.target)
		if n1.equal(n2) != (k1.PK == k2.PK) {
			t.Fatalf("requests %+v and %+v: keys %q and %q", n1, n2, k1.PK, k2.PK)
		}
		if again := keyDef.KeyForTarget(slices.Clone(n1.scopes), n1.target); again.PK != k1.PK {
			t.Fatalf("one request, two keys: %q %q", k1.PK, again.PK)
		}
		if len(k1.PK) > 200 {
			t.Fatalf("key of %d bytes", len(k1.PK))
		}
	})
}

// TestWebIdentityRevokeURLOnTokenHost: the aws_web_identity JWT is a bearer
// credential; a revoke_url on another origin than token_url would receive
// it, so such a definition is refused at load, naming revoke_url. Before
// the fix it loaded, and revocation sent the JWT there.
func TestWebIdentityRevokeURLOnTokenHost(t *testing.T) {
	for _, c := range []struct {
		revoke string
		ok     bool
	}{
		{"https://login.example/tenant/revoke", true},
		{"https://LOGIN.example:443/tenant/revoke", true},
		{"https://other.example/revoke", false},
		{"https://login.example:8443/revoke", false},
		{"https://login.example.evil.example/revoke", false},
	} {
		d := &Definition{Name: "wi", TokenURL: "https://login.example/tenant/token", ClientID: "c", AuthMethod: AuthAWSWebIdentity, RevokeURL: c.revoke}
		err := d.Validate()
		var fe *FieldError
		if c.ok != (err == nil) || (!c.ok && (!errors.As(err, &fe) || fe.Field != "revoke_url")) {
			t.Errorf("revoke_url %s: %v", c.revoke, err)
		}
	}
	// Other methods keep their revoke_url anywhere (an assertion there is
	// made for the revocation endpoint's own audience).
	d := &Definition{Name: "pk", TokenURL: "https://login.example/token", ClientID: "c", ClientSecret: "s", RevokeURL: "https://other.example/revoke"}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
}
