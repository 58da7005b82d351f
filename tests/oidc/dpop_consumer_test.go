package oidc

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	rs "github.com/token-vendor/token-vendor/tests/dpop"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// boundJKT reads a JWT access token's cnf.jkt after checking its signature
// with the authorization server's JWKS: what a resource server does.
func boundJKT(t *testing.T, issuer string) func(string) (string, error) {
	set, err := jwk.Fetch(context.Background(), issuer+"/jwks")
	if err != nil {
		t.Fatal(err)
	}
	return func(tok string) (string, error) {
		parsed, err := jwt.Parse([]byte(tok), jwt.WithKeySet(set))
		if err != nil {
			return "", err
		}
		var cnf map[string]any
		if err := parsed.Get("cnf", &cnf); err != nil {
			return "", errors.New("token has no cnf")
		}
		j, _ := cnf["jkt"].(string)
		return j, nil
	}
}

// A consumer's requests to a DPoP resource server: the token and a proof
// per request come from the vendor (HTTP API with the Go client's
// DPoPTransport, and direct invoke), signed with the provider's DPoP key,
// which the consumer never holds. Both the authorization server and the
// resource server demand nonces. The caller outside allowed_callers gets
// neither token nor proof; each request leaves one audit record saying a
// proof was issued, without the proof.
func TestConsumerProofsAgainstResourceServer(t *testing.T) {
	keys := assertion.New(nil)
	authKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dpopKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	placeholder := &server{issuer: "http://127.0.0.1:1"}
	reg := definition(placeholder, "bank", func(d *provider.Definition) { d.PrivateKey = pemOf(authKey) })
	srv := startEnv(t, []registration{{ClientID: "bank", JWKS: jwks(t, keys, reg), DPoPBound: true}}, nil, "DPOP_NONCE=1")
	const allowed = "arn:aws:sts::123456789012:assumed-role/payments/x"
	def := definition(srv, "bank", func(d *provider.Definition) {
		d.PrivateKey, d.DPoPPrivateKey, d.Resources = pemOf(authKey), pemOf(dpopKey), []string{rsResource}
		d.AllowedCallers = []string{"arn:aws:iam::123456789012:role/payments"}
		d.Issuer, d.Profile = srv.issuer, provider.ProfileFAPI2 // FAPI 2.0: aud = issuer, which oidc-provider accepts
	})
	prover := dpop.New(keys)
	up := &upstream.Client{Assertions: keys, DPoP: prover, MaxAttempts: 1}
	provs := registry.NewStatic(map[string]*provider.Definition{"bank": def})
	v := vend.New(provs, up, store.NewMemory(nil), vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	var audit testenv.SyncBuffer
	g := gate.New(v, provs, slog.New(slog.NewJSONHandler(&audit, nil)), nil).WithProver(prover)
	caller := allowed
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := identity.FromIAM(identity.PathAPI, caller, "123456789012", "")
		httpapi.New(g, provs, nil, nil).ServeHTTP(w, r.WithContext(identity.NewContext(r.Context(), c)))
	}))
	defer api.Close()

	resource := &rs.Server{JKTOf: boundJKT(t, srv.issuer), Nonce: "rs-nonce-7"}
	rsSrv := httptest.NewServer(resource)
	defer rsSrv.Close()

	c := client.New(client.NewHTTPFetcher(api.URL, nil, ""))
	hc := &http.Client{Transport: c.DPoPTransport(nil, client.Request{Provider: "bank", Scope: "read"})}
	for i := range 3 {
		resp, err := hc.Post(rsSrv.URL+"/payments?id="+string(rune('a'+i)), "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d; resource server refusals %v", i, resp.StatusCode, resource.Refusals())
		}
	}
	// One nonce demand by the resource server, answered once; every other
	// proof accepted at first sight.
	if got := resource.Refusals(); len(got) != 1 || !strings.Contains(got[0], "nonce") || resource.Accepted() != 3 {
		t.Fatalf("refusals %v, accepted %d", got, resource.Accepted())
	}

	// Direct invoke: the same answer shape.
	// Identity is not the subject here: the invoke carries no proof, so the
	// gate opts in to unverified callers for the unrestricted provider (§11).
	g2 := gate.New(v, registry.NewStatic(map[string]*provider.Definition{"bank": withoutCallers(def)}), nil, nil).WithProver(prover).WithPolicy(authz.Policy{AllowUnverified: true})
	invoke := lambdafn.Invoke(g2, nil, slog.New(slog.DiscardHandler), nil)
	ev, _ := json.Marshal(map[string]string{"provider": "bank", "scope": "read", "dpop_htm": "GET", "dpop_htu": rsSrv.URL + "/balance", "dpop_nonce": "rs-nonce-7"})
	out, err := invoke(context.Background(), ev)
	if err != nil || out.TokenType != "DPoP" || out.DPoPProof == "" {
		t.Fatalf("invoke: %+v %v", out.TokenType, err)
	}
	req, _ := http.NewRequest("GET", rsSrv.URL+"/balance", nil)
	req.Header.Set("Authorization", "DPoP "+out.AccessToken)
	req.Header.Set("DPoP", out.DPoPProof)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("the invoke's proof was refused: %v %v", err, resource.Refusals())
	}

	// A caller outside allowed_callers: refused, no proof signed.
	caller = "arn:aws:sts::123456789012:assumed-role/other/x"
	_, err = c.Proof(context.Background(), client.Request{Provider: "bank", Scope: "read"}, "GET", rsSrv.URL+"/balance", "")
	var ve *client.Error
	if !errors.As(err, &ve) || ve.Status != http.StatusForbidden {
		t.Fatalf("caller outside allowed_callers: %v", err)
	}
	// Bad input is refused clearly.
	caller = allowed
	if _, err := c.Proof(context.Background(), client.Request{Provider: "bank"}, "GET", "/relative", ""); !errors.As(err, &ve) || ve.Status != 400 || !strings.Contains(ve.Message, "absolute") {
		t.Fatalf("relative dpop_htu: %v", err)
	}

	var issued, refused int
	for _, line := range bytes.Split(bytes.TrimSpace([]byte(audit.String())), []byte("\n")) {
		var rec map[string]any
		json.Unmarshal(line, &rec)
		if rec["dpop_proof"] == "issued" {
			issued++
		}
		if rec["outcome"] != gate.Granted {
			refused++
		}
		if bytes.Contains(line, []byte("eyJ")) {
			t.Fatalf("audit record holds a JWT: %s", line)
		}
	}
	// 3 requests + 1 nonce retry over the HTTP API; the refusal and the
	// bad request are audited too.
	if issued != 4 || refused != 2 {
		t.Fatalf("audit: %d records with a proof issued, %d refusals:\n%s", issued, refused, audit.String())
	}
}

func withoutCallers(d *provider.Definition) *provider.Definition {
	cp := *d
	cp.AllowedCallers = nil
	if err := cp.Validate(); err != nil {
		panic(err)
	}
	return &cp
}
