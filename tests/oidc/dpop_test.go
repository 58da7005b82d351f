package oidc

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

// proofs is every DPoP proof the server received, decoded at its side.
func (s *server) proofs(t *testing.T) []seen {
	t.Helper()
	resp, err := http.Get(s.issuer + "/__dpop")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []seen
	json.NewDecoder(resp.Body).Decode(&out)
	return out
}

// dpopVendor is a vendor whose upstream client signs DPoP proofs.
func dpopVendor(defs map[string]*provider.Definition, keys *assertion.Keys) (*vend.Vendor, *store.Memory, *dpop.Prover) {
	prover := dpop.New(keys)
	st := store.NewMemory(nil)
	up := &upstream.Client{Assertions: keys, DPoP: prover, MaxAttempts: 1}
	return vend.New(vendtest.NewProviders(defs), up, st, vend.Options{DisableRefreshAhead: true, L1MaxAge: -1}), st, prover
}

// claimsOf decodes a JWT's claims (no verification: the server signed it).
func claimsOf(t *testing.T, jwt string) map[string]any {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("access token is not a JWT (%d parts)", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// The resource indicator makes oidc-provider issue JWT access tokens, so
// the binding (cnf.jkt) can be read from the token itself.
const rsResource = "https://rs.example/api"

// TestDPoPBoundTokensAgainstOIDCProvider: for PEM and KMS DPoP keys (EC
// ES256 and RSA PS256), oidc-provider, which requires DPoP of these
// clients (dpop_bound_access_tokens), issues DPoP-bound tokens whose
// cnf.jkt is the vendor's DPoP key; the record holds token_type DPoP and
// the same jkt, and a cached read returns them. Every proof the server saw
// is well formed (typ, jwk, htm, htu, iat, unique jti).
func TestDPoPBoundTokensAgainstOIDCProvider(t *testing.T) {
	for _, nonce := range []bool{false, true} {
		name := "no-nonce"
		if nonce {
			name = "nonce-required"
		}
		t.Run(name, func(t *testing.T) { dpopBound(t, nonce) })
	}
}

func dpopBound(t *testing.T, requireNonce bool) {
	api := kmsClient(t)
	keys := assertion.New(api)
	authKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	pubs := map[string]crypto.PublicKey{"pem-ec": ecKey.Public(), "pem-rsa": rsaKey.Public()}
	setups := map[string]func(*provider.Definition){
		"pem-ec":  func(d *provider.Definition) { d.DPoPPrivateKey = pemOf(ecKey) },
		"pem-rsa": func(d *provider.Definition) { d.DPoPPrivateKey, d.DPoPSigningAlg = pemOf(rsaKey), "PS256" },
		"kms-ec":  func(d *provider.Definition) { d.DPoPKMSKeyID = kmsKey(t, api, kmstypes.KeySpecEccNistP256) },
		// RS256: moto's PS256 signatures do not verify with the hash-length
		// salt RFC 7518 §3.5 asks for (real KMS's do); PS256 with a PEM key above.
		"kms-rsa": func(d *provider.Definition) {
			d.DPoPKMSKeyID, d.DPoPSigningAlg = kmsKey(t, api, kmstypes.KeySpecRsa2048), "RS256"
		},
	}
	placeholder := &server{issuer: "http://127.0.0.1:1"}
	var regs []registration
	for id := range setups {
		d := definition(placeholder, id, func(d *provider.Definition) { d.PrivateKey = pemOf(authKey) })
		regs = append(regs, registration{ClientID: id, JWKS: jwks(t, keys, d), DPoPBound: true})
	}
	var env []string
	if requireNonce {
		env = append(env, "DPOP_NONCE=1")
	}
	srv := startEnv(t, regs, nil, env...)
	defs := map[string]*provider.Definition{}
	for id, set := range setups {
		defs[id] = definition(srv, id, func(d *provider.Definition) {
			d.PrivateKey, d.Resources = pemOf(authKey), []string{rsResource}
			set(d)
		})
	}
	v, st, prover := dpopVendor(defs, keys)
	ctx := context.Background()
	for id, def := range defs {
		t.Run(id, func(t *testing.T) {
			tok, err := v.Token(ctx, vend.Request{Provider: id, Scope: "read", MinTTL: -1})
			if err != nil {
				t.Fatalf("fetch: %v", err)
			}
			jkt, err := prover.Thumbprint(ctx, def)
			if err != nil {
				t.Fatal(err)
			}
			if pub, ok := pubs[id]; ok {
				if want, _ := provider.Thumbprint(pub); want != jkt {
					t.Fatalf("thumbprint %s, the PEM key's is %s", jkt, want)
				}
			}
			if tok.TokenType != "DPoP" || tok.JKT != jkt {
				t.Fatalf("vended token_type %q jkt %q, want DPoP %q", tok.TokenType, tok.JKT, jkt)
			}
			cnf, _ := claimsOf(t, tok.AccessToken)["cnf"].(map[string]any)
			if cnf["jkt"] != jkt {
				t.Fatalf("token's cnf %v, want jkt %s", cnf, jkt)
			}
			items, err := st.Scan(ctx, store.Filter{Prefix: "token#", Providers: []string{id}})
			if err != nil || len(items) != 1 || items[0].TokenType != "DPoP" || items[0].JKT != jkt {
				t.Fatalf("record: %+v %v", items, err)
			}
			again, err := v.Token(ctx, vend.Request{Provider: id, Scope: "read", MinTTL: -1})
			if err != nil || again.Source != vend.FromL2 || again.TokenType != "DPoP" || again.JKT != jkt {
				t.Fatalf("cached read: %+v %v", again.Source, err)
			}
			// The refresher's path (a forced renewal) binds the new token to the same key.
			renewed, err := v.Refresh(ctx, vend.Request{Provider: id, Scope: "read", MinTTL: -1})
			if err != nil || renewed.AccessToken == tok.AccessToken || renewed.JKT != jkt {
				t.Fatalf("renewal: jkt %q %v", renewed.JKT, err)
			}
			if cnf, _ := claimsOf(t, renewed.AccessToken)["cnf"].(map[string]any); cnf["jkt"] != jkt {
				t.Fatalf("renewed token's cnf %v", cnf)
			}
		})
	}
	got := srv.proofs(t)
	jtis := map[any]bool{}
	withNonce := 0
	for _, p := range got {
		h, c := p.Header, p.Claims
		jwk, _ := h["jwk"].(map[string]any)
		if h["typ"] != "dpop+jwt" || (h["alg"] != "ES256" && h["alg"] != "PS256" && h["alg"] != "RS256") || jwk == nil || jwk["d"] != nil ||
			c["htm"] != "POST" || c["htu"] != srv.issuer+"/token" || c["iat"] == nil || c["ath"] != nil || jtis[c["jti"]] {
			t.Fatalf("proof as the server decoded it: %+v", p)
		}
		jtis[c["jti"]] = true
		if c["nonce"] != nil {
			withNonce++
		}
	}
	// Two fetches per client; with a required nonce, one refused first try
	// per client (its nonce is then remembered for the renewal).
	want := 2 * len(defs)
	if requireNonce {
		want += len(defs)
		if withNonce != 2*len(defs) {
			t.Fatalf("%d of %d proofs carried a nonce, want %d", withNonce, len(got), 2*len(defs))
		}
	} else if withNonce != 0 {
		t.Fatalf("%d proofs carried a nonce the server never asked for", withNonce)
	}
	if len(got) != want {
		t.Fatalf("server saw %d proofs, want %d", len(got), want)
	}
}
