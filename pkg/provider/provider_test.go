package provider

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"reflect"
	"strings"
	"testing"
)

const canary = "S3CR3T-canary-value"

func def(mod func(m map[string]any)) []byte {
	m := map[string]any{
		"token_url":     "https://sandbox.kopokopo.com/oauth/token",
		"client_id":     "cid",
		"client_secret": canary,
	}
	if mod != nil {
		mod(m)
	}
	b, _ := json.Marshal(m)
	return b
}

func TestParseValidAppliesDefaults(t *testing.T) {
	d, err := Parse("kopokopo", def(nil))
	if err != nil {
		t.Fatal(err)
	}
	if d.AuthMethod != AuthBasic || d.DefaultExpiresIn != 3600 || d.Name != "kopokopo" {
		t.Fatalf("defaults not applied: %+v", d)
	}
	if strings.Contains(d.String(), canary) {
		t.Fatal("String() leaks the secret")
	}
}

func TestParseFullDefinition(t *testing.T) {
	raw := `{"token_url":"https://x.example/o/token/","client_id":"a","client_secret":"b","auth_method":"query",
	"scopes":["read","write"],"allowed_scopes":["read","write","admin"],"extra_params":{"audience":"api"},
	"revoke_url":"https://x.example/o/revoke_token/","default_expires_in":7200,"refresh_before_seconds":600}`
	d, err := Parse("dot", []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := &Definition{Name: "dot", TokenURL: "https://x.example/o/token/", ClientID: "a", ClientSecret: "b", AuthMethod: AuthQuery,
		Scopes: []string{"read", "write"}, AllowedScopes: []string{"read", "write", "admin"}, ExtraParams: map[string]string{"audience": "api"},
		RevokeURL: "https://x.example/o/revoke_token/", DefaultExpiresIn: 7200, RefreshBeforeSeconds: 600}
	if err := want.Validate(); err != nil { // fills the cached fingerprint, as Parse does
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("got %+v\nwant %+v", d, want)
	}
}

func TestParseRejectsWithFieldAndNoSecret(t *testing.T) {
	cases := []struct {
		name, field string
		data        []byte
	}{
		{"missing token_url", "token_url", def(func(m map[string]any) { delete(m, "token_url") })},
		{"http to public host", "token_url", def(func(m map[string]any) { m["token_url"] = "http://api.example.com/token" })},
		{"ftp", "token_url", def(func(m map[string]any) { m["token_url"] = "ftp://api.example.com/token" })},
		{"relative", "token_url", def(func(m map[string]any) { m["token_url"] = "/oauth/token" })},
		{"userinfo", "token_url", def(func(m map[string]any) { m["token_url"] = "https://u:" + canary + "@x.example/t" })},
		{"bad revoke", "revoke_url", def(func(m map[string]any) { m["revoke_url"] = "http://x.example/revoke" })},
		{"missing client_id", "client_id", def(func(m map[string]any) { delete(m, "client_id") })},
		{"missing secret", "client_secret", def(func(m map[string]any) { delete(m, "client_secret") })},
		{"secret with newline", "client_secret", def(func(m map[string]any) { m["client_secret"] = canary + "\n" })},
		{"bad auth method", "auth_method", def(func(m map[string]any) { m["auth_method"] = "client_secret_magic" })},
		{"client_secret_jwt with a short secret", "client_secret", def(func(m map[string]any) { m["auth_method"] = "client_secret_jwt" })},
		{"client_secret_jwt with a KMS key", "kms_key_id", def(func(m map[string]any) {
			m["auth_method"], m["client_secret"], m["kms_key_id"] = "client_secret_jwt", strings.Repeat("s", 40), "alias/k"
		})},
		{"client_secret_jwt with RS256", "signing_alg", def(func(m map[string]any) {
			m["auth_method"], m["client_secret"], m["signing_alg"] = "client_secret_jwt", strings.Repeat("s", 40), "RS256"
		})},
		{"private_key_jwt with a secret", "client_secret", def(func(m map[string]any) { m["auth_method"] = "private_key_jwt"; m["kms_key_id"] = "alias/k" })},
		{"private_key_jwt without a key", "kms_key_id", def(func(m map[string]any) { m["auth_method"] = "private_key_jwt"; delete(m, "client_secret") })},
		{"private_key_jwt with both keys", "private_key", def(func(m map[string]any) {
			m["auth_method"] = "private_key_jwt"
			delete(m, "client_secret")
			m["kms_key_id"], m["private_key"] = "alias/k", "-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----\n"
		})},
		{"private_key not PEM", "private_key", def(func(m map[string]any) {
			m["auth_method"] = "private_key_jwt"
			delete(m, "client_secret")
			m["private_key"] = "SECRET-not-pem"
		})},
		{"unsupported signing_alg", "signing_alg", def(func(m map[string]any) {
			m["auth_method"] = "private_key_jwt"
			delete(m, "client_secret")
			m["kms_key_id"], m["signing_alg"] = "alias/k", "HS256"
		})},
		{"kms_key_id with a secret method", "kms_key_id", def(func(m map[string]any) { m["kms_key_id"] = "alias/k" })},
		{"scope with space", "scopes", def(func(m map[string]any) { m["scopes"] = []string{"read write"} })},
		{"empty scope", "allowed_scopes", def(func(m map[string]any) { m["allowed_scopes"] = []string{""} })},
		{"default outside allowed", "scopes", def(func(m map[string]any) {
			m["scopes"] = []string{"admin"}
			m["allowed_scopes"] = []string{"read"}
		})},
		{"extra overrides secret", "extra_params", def(func(m map[string]any) { m["extra_params"] = map[string]string{"client_secret": "x"} })},
		{"negative default expiry", "default_expires_in", def(func(m map[string]any) { m["default_expires_in"] = -1 })},
		{"negative refresh before", "refresh_before_seconds", def(func(m map[string]any) { m["refresh_before_seconds"] = -5 })},
		{"allowed_callers entry not an ARN", "allowed_callers[1]", def(func(m map[string]any) {
			m["allowed_callers"] = []string{"arn:aws:iam::123456789012:role/ok", "payments-role"}
		})},
		{"allowed_callers entry with a wildcard account", "allowed_callers[0]", def(func(m map[string]any) {
			m["allowed_callers"] = []string{"arn:aws:iam::*:role/payments"}
		})},
		{"allowed_callers empty", "allowed_callers", def(func(m map[string]any) { m["allowed_callers"] = []string{} })},
		{"admin_callers group", "admin_callers[0]", def(func(m map[string]any) { m["admin_callers"] = []string{"arn:aws:iam::123456789012:group/ops"} })},
		{"unknown field", "client_secert", def(func(m map[string]any) { m["client_secert"] = canary })},
		{"wrong type", "scopes", def(func(m map[string]any) { m["scopes"] = "read" })},
		{"secret wrong type", "client_secret", []byte(`{"token_url":"https://x.example/t","client_id":"a","client_secret":12345}`)},
		{"syntax error next to secret", "", []byte(`{"token_url":"https://x.example/t","client_secret":"` + canary + `" "client_id":"a"}`)},
		{"trailing data", "", append(def(nil), []byte(`{"a":1}`)...)},
		{"empty", "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("kopokopo", tc.data)
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("want *FieldError, got %v", err)
			}
			if fe.Field != tc.field {
				t.Fatalf("field = %q, want %q (%v)", fe.Field, tc.field, err)
			}
			if fe.Reason == "" {
				t.Fatal("no reason given")
			}
			if strings.Contains(err.Error(), canary) {
				t.Fatalf("error leaks the secret: %v", err)
			}
		})
	}
}

func TestParseLoopbackHTTPAllowed(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:8081/k2/oauth/token", "http://localhost/t", "http://[::1]:9/t"} {
		if _, err := Parse("local", def(func(m map[string]any) { m["token_url"] = u })); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
}

func TestParseRejectsBadNames(t *testing.T) {
	for _, n := range []string{"", "Kopo", "-x", "a/b", strings.Repeat("a", 65), "a b", "../x"} {
		if _, err := Parse(n, def(nil)); !errors.Is(err, ErrInvalidName) {
			t.Errorf("name %q: got %v", n, err)
		}
	}
	for _, n := range []string{"a", "kopo-kopo", "k2.sandbox", "x_1", strings.Repeat("a", 64)} {
		if !ValidName(n) {
			t.Errorf("name %q should be valid", n)
		}
	}
}

func TestNormalizeScope(t *testing.T) {
	cases := map[string][]string{
		"write read read": {"read", "write"},
		"  read   write ": {"read", "write"},
		"":                {},
		"read":            {"read"},
		"a:b x/y":         {"a:b", "x/y"},
	}
	for in, want := range cases {
		got, err := NormalizeScope(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("NormalizeScope(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"read\twrite", `re"ad`, `a\b`, "caf\u00e9", "x\x00", strings.Repeat("a", 2000)} {
		if _, err := NormalizeScope(bad); !errors.Is(err, ErrBadScope) {
			t.Errorf("NormalizeScope(%q) err = %v, want ErrBadScope", bad, err)
		}
	}
}

func TestResolveDefaultsAndAllowed(t *testing.T) {
	d := &Definition{Name: "dot", Scopes: []string{"write", "read"}, AllowedScopes: []string{"read", "write", "admin"}}
	got, err := d.Resolve("")
	if err != nil || !reflect.DeepEqual(got, []string{"read", "write"}) {
		t.Fatalf("default scopes: %v %v", got, err)
	}
	got, err = d.Resolve("admin read")
	if err != nil || !reflect.DeepEqual(got, []string{"admin", "read"}) {
		t.Fatalf("allowed: %v %v", got, err)
	}
	if _, err := d.Resolve("read payments"); !errors.Is(err, ErrScopeNotAllowed) {
		t.Fatalf("want ErrScopeNotAllowed, got %v", err)
	}
	open := &Definition{Name: "k2"}
	if got, err := open.Resolve("anything"); err != nil || len(got) != 1 {
		t.Fatalf("no allowed_scopes means any scope: %v %v", got, err)
	}
}

func TestKeyForSeparatesRegistrationsAndScopes(t *testing.T) {
	a := &Definition{Name: "p", ClientID: "one", ClientSecret: "s1"}
	b := &Definition{Name: "p", ClientID: "one", ClientSecret: "rotated"}
	c := &Definition{Name: "p", ClientID: "two", ClientSecret: "s1"}
	d := &Definition{Name: "p", ClientID: "one", ClientSecret: "s1", ExtraParams: map[string]string{"audience": "x"}}
	s1, _ := NormalizeScope("write read")
	s2, _ := NormalizeScope("read write read")
	if a.KeyFor(s1).PK != a.KeyFor(s2).PK {
		t.Fatal("same scope set in another order must share a key")
	}
	if a.KeyFor(s1).PK != b.KeyFor(s1).PK {
		t.Fatal("a rotated secret keeps the key: the registration is the same")
	}
	if a.KeyFor(s1).PK == c.KeyFor(s1).PK {
		t.Fatal("another client id must not share a key")
	}
	if a.KeyFor(s1).PK == d.KeyFor(s1).PK {
		t.Fatal("other extra_params (audience) must not share a key")
	}
	if a.KeyFor(s1).PK == a.KeyFor([]string{"read"}).PK {
		t.Fatal("another scope must not share a key")
	}
	// Another authorization server (a multi-tenant app has one client id in
	// every tenant) or another auth method is another registration.
	tenant := &Definition{Name: "p", ClientID: "one", ClientSecret: "s1", TokenURL: "https://login.example/tenant-b/token"}
	a.TokenURL = "https://login.example/tenant-a/token"
	if a.KeyFor(s1).PK == tenant.KeyFor(s1).PK {
		t.Fatal("another token_url must not share a key")
	}
	post := *a
	post.AuthMethod = AuthPost
	if a.KeyFor(s1).PK == post.KeyFor(s1).PK {
		t.Fatal("another auth_method must not share a key")
	}
	k := a.KeyFor(s1)
	if !strings.HasPrefix(k.PK, "token#p#") || k.Scope() != "read write" || strings.Contains(k.PK, "one") {
		t.Fatalf("unexpected key %+v", k)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(def(nil)))
	f.Add([]byte(`{"token_url":"http://127.0.0.1/t","client_id":"a","client_secret":"b","auth_method":"query","scopes":["a"]}`))
	f.Add([]byte(`{"client_secret":"zzzzzzzz" ,}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse("fuzz", data)
		if err == nil {
			if d.Validate() != nil {
				t.Fatal("parsed definition fails validation")
			}
			return
		}
		var m map[string]any
		if json.Unmarshal(data, &m) == nil {
			if s, ok := m["client_secret"].(string); ok && len(s) >= 8 && strings.Contains(err.Error(), s) {
				t.Fatalf("error echoes client_secret: %v", err)
			}
		}
	})
}

// Keys that cannot sign are refused when the definition is loaded, not at
// its first fetch: short RSA keys, encrypted PEM, other curves, an
// algorithm that does not fit the key.
func TestPrivateKeyCheckedAtLoad(t *testing.T) {
	pemOf := func(k any) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	//lint:ignore SA1019 building the legacy encrypted PEM the check must refuse
	enc, _ := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsa2048), []byte("pw"), x509.PEMCipherAES256)
	pkcs8enc := "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
	def := func(key, alg string) []byte {
		b, _ := json.Marshal(map[string]string{"token_url": "https://idp.example/token", "client_id": "c", "auth_method": AuthPrivateKeyJWT, "private_key": key, "signing_alg": alg})
		return b
	}
	for name, c := range map[string]struct {
		key, alg, field, reason string
	}{
		"RSA 1024":          {pemOf(rsa1024), "", "private_key", "2048"},
		"legacy encrypted":  {string(pem.EncodeToMemory(enc)), "", "private_key", "encrypted"},
		"PKCS #8 encrypted": {pkcs8enc, "", "private_key", "encrypted"},
		"P-384":             {pemOf(p384), "", "private_key", "P-256"},
		"ES256 on RSA":      {pemOf(rsa2048), "ES256", "signing_alg", "fit"},
		"RS256 on EC":       {pemOf(p256), "RS256", "signing_alg", "fit"},
	} {
		_, err := Parse("idp", def(c.key, c.alg))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(fe.Reason, c.reason) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, ok := range [][2]string{{pemOf(rsa2048), "PS256"}, {pemOf(p256), ""}} {
		if _, err := Parse("idp", def(ok[0], ok[1])); err != nil {
			t.Errorf("a usable key refused: %v", err)
		}
	}
}

// Resource indicators and audiences: normalized like scopes, defaults when
// none is asked, refused (naming the value) outside the allowed ones, and
// part of the key.
func TestResolveTarget(t *testing.T) {
	d := &Definition{Name: "p", TokenURL: "https://idp.example/token", ClientID: "c", ClientSecret: "s",
		Resources: []string{"https://api.example/payments"}, AllowedResources: []string{"https://api.example/payments", "https://api.example/payouts"},
		Audiences: []string{"api://default"}, AllowedAudiences: []string{"api://default", "api://ledger"}}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	def, err := d.ResolveTarget("", "")
	if err != nil || len(def.Resources) != 1 || def.Audiences[0] != "api://default" {
		t.Fatalf("defaults: %+v %v", def, err)
	}
	a, err := d.ResolveTarget("https://api.example/payouts https://api.example/payments https://api.example/payouts", "api://ledger")
	if err != nil || len(a.Resources) != 2 || a.Resources[0] != "https://api.example/payments" {
		t.Fatalf("normalized: %+v %v", a, err)
	}
	b, _ := d.ResolveTarget("https://api.example/payments https://api.example/payouts", "api://ledger")
	if d.KeyForTarget(nil, a).PK != d.KeyForTarget(nil, b).PK || d.KeyForTarget(nil, a).PK == d.KeyForTarget(nil, def).PK || d.KeyForTarget(nil, def).PK == d.KeyFor(nil).PK {
		t.Fatal("the target must be part of the key, normalized")
	}
	for _, c := range []struct{ res, aud, want string }{
		{"https://evil.example/", "", "https://evil.example/"},
		{"", "api://other", "api://other"},
	} {
		if _, err := d.ResolveTarget(c.res, c.aud); !errors.Is(err, ErrTargetNotAllowed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q %q: %v", c.res, c.aud, err)
		}
	}
	for _, bad := range []string{"not-a-uri", "https://api.example/x#frag", "/relative"} {
		if _, err := d.ResolveTarget(bad, ""); !errors.Is(err, ErrBadScope) {
			t.Errorf("resource %q: %v", bad, err)
		}
	}
	clash := &Definition{Name: "p", TokenURL: "https://idp.example/token", ClientID: "c", ClientSecret: "s",
		ExtraParams: map[string]string{"audience": "x"}, AllowedAudiences: []string{"y"}}
	var fe *FieldError
	if err := clash.Validate(); !errors.As(err, &fe) || fe.Field != "extra_params" {
		t.Fatalf("extra_params audience beside allowed_audiences: %v", err)
	}
}
