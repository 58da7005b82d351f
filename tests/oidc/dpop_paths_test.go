package oidc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
	rs "github.com/token-vendor/token-vendor/tests/dpop"
	"github.com/token-vendor/token-vendor/tests/lambdart"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// proofWorld is a vendor for two DPoP-bound registrations at
// oidc-provider ("bank" and "bank2", each with a DPoP key of its own) and
// an RFC 9449 resource server demanding a nonce, which accepts only tokens
// oidc-provider signed.
type proofWorld struct {
	defs     map[string]*provider.Definition
	gate     *gate.Gate // allowed_callers: the payments role
	open     *gate.Gate // no allowed_callers, unverified callers opted in (direct invoke without identity: proofs are this test's subject, identity is tests/authz's)
	audit    *testenv.SyncBuffer
	resource *rs.Server
	rsURL    string
}

const paymentsRole = "arn:aws:iam::123456789012:role/payments"

// newProofWorld: kmsKeys signs proofs with KMS keys on moto (ES256), else
// with PEM keys; the vendor's gate pools KMS proofs as the app does.
func newProofWorld(t *testing.T, kmsKeys bool) *proofWorld {
	t.Helper()
	keys := assertion.New(nil)
	var setKey func(d *provider.Definition)
	if kmsKeys {
		api := kmsClient(t)
		keys = assertion.New(api)
		setKey = func(d *provider.Definition) {
			d.DPoPKMSKeyID, d.DPoPSigningAlg = kmsKey(t, api, kmstypes.KeySpecEccNistP256), "ES256"
		}
	} else {
		setKey = func(d *provider.Definition) {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			d.DPoPPrivateKey = pemOf(k)
		}
	}
	authKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	placeholder := &server{issuer: "http://127.0.0.1:1"}
	var regs []registration
	for _, id := range []string{"bank", "bank2"} {
		reg := definition(placeholder, id, func(d *provider.Definition) { d.PrivateKey = pemOf(authKey) })
		regs = append(regs, registration{ClientID: id, JWKS: jwks(t, keys, reg), DPoPBound: true})
	}
	srv := startEnv(t, regs, nil, "DPOP_NONCE=1")
	w := &proofWorld{defs: map[string]*provider.Definition{}, audit: &testenv.SyncBuffer{}}
	for _, id := range []string{"bank", "bank2"} {
		w.defs[id] = definition(srv, id, func(d *provider.Definition) {
			d.PrivateKey, d.Resources = pemOf(authKey), []string{rsResource}
			setKey(d)
			d.AllowedCallers = []string{paymentsRole}
			d.Issuer, d.Profile = srv.issuer, provider.ProfileFAPI2
		})
	}
	prover := dpop.New(keys)
	up := &upstream.Client{Assertions: keys, DPoP: prover, MaxAttempts: 1}
	provs := registry.NewStatic(w.defs)
	v := vend.New(provs, up, store.NewMemory(nil), vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	w.gate = gate.New(v, provs, slog.New(slog.NewJSONHandler(w.audit, nil)), nil).WithProver(dpop.NewPool(prover))
	open := map[string]*provider.Definition{}
	for id, d := range w.defs {
		open[id] = withoutCallers(d)
	}
	w.open = gate.New(v, registry.NewStatic(open), slog.New(slog.NewJSONHandler(w.audit, nil)), nil).WithProver(dpop.NewPool(prover)).WithPolicy(authz.Policy{AllowUnverified: true})
	w.resource = &rs.Server{JKTOf: boundJKT(t, srv.issuer), Nonce: "rs-nonce-" + testenv.RandomSuffix()}
	rsSrv := httptest.NewServer(w.resource)
	t.Cleanup(rsSrv.Close)
	w.rsURL = rsSrv.URL
	return w
}

// lastRefusal is the resource server's reason for its latest refusal.
func (w *proofWorld) lastRefusal() string {
	r := w.resource.Refusals()
	if len(r) == 0 {
		return ""
	}
	return r[len(r)-1]
}

// send makes the consumer's resource request; proof "" sends no DPoP header.
func (w *proofWorld) send(t *testing.T, target, token, proof string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", target, nil)
	req.Header.Set("Authorization", "DPoP "+token)
	if proof != "" {
		req.Header.Set("DPoP", proof)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// auditProofs counts the audit records saying a proof was issued, and
// fails on any record holding a JWT.
func (w *proofWorld) auditProofs(t *testing.T) (issued, refused int) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(w.audit.String()), "\n") {
		if line == "" {
			continue
		}
		if strings.Contains(line, "eyJ") {
			t.Fatalf("audit record holds a JWT: %s", line)
		}
		var rec map[string]any
		json.Unmarshal([]byte(line), &rec)
		if rec["msg"] != "audit" {
			continue
		}
		if rec["dpop_proof"] == "issued" {
			issued++
		}
		if rec["outcome"] != gate.Granted {
			refused++
		}
	}
	return issued, refused
}

// vendPath is one way a consumer gets a token and a proof: the HTTP API's
// Lambda handler (API Gateway event with the verified IAM identity) or the
// vend function's direct-invoke handler; both through lambda.NewHandler.
type vendPath struct {
	name string
	get  func(t *testing.T, prov, htu, nonce, caller string) (token, proof string, status int)
}

func (w *proofWorld) paths() []vendPath {
	api := lambda.NewHandler(lambdafn.APIGateway(httpapi.New(w.gate, registry.NewStatic(w.defs), nil, nil)))
	invoke := lambda.NewHandler(lambdafn.Invoke(w.open, nil, slog.New(slog.DiscardHandler), nil))
	return []vendPath{
		{"http-api", func(t *testing.T, prov, htu, nonce, caller string) (string, string, int) {
			q := url.Values{"scope": {"read"}, "dpop_htm": {"GET"}, "dpop_htu": {htu}}
			if nonce != "" {
				q.Set("dpop_nonce", nonce)
			}
			e := events.APIGatewayV2HTTPRequest{RawPath: "/v1/tokens/" + prov, RawQueryString: q.Encode(),
				RequestContext: events.APIGatewayV2HTTPRequestContext{HTTP: events.APIGatewayV2HTTPRequestContextHTTPDescription{Method: "GET"},
					Authorizer: &events.APIGatewayV2HTTPRequestContextAuthorizerDescription{IAM: &events.APIGatewayV2HTTPRequestContextAuthorizerIAMDescription{
						UserARN: caller, AccountID: "123456789012"}}}}
			ev, _ := json.Marshal(e)
			out, err := api.Invoke(context.Background(), ev)
			if err != nil {
				t.Fatal(err)
			}
			var resp events.APIGatewayV2HTTPResponse
			json.Unmarshal(out, &resp)
			var tok wire.TokenResponse
			json.Unmarshal([]byte(resp.Body), &tok)
			return tok.AccessToken, tok.DPoPProof, resp.StatusCode
		}},
		{"direct-invoke", func(t *testing.T, prov, htu, nonce, _ string) (string, string, int) {
			ev, _ := json.Marshal(map[string]string{"provider": prov, "scope": "read", "dpop_htm": "GET", "dpop_htu": htu, "dpop_nonce": nonce})
			out, err := invoke.Invoke(context.Background(), ev)
			if err != nil {
				return "", "", http.StatusBadRequest
			}
			var tok wire.TokenResponse
			json.Unmarshal(out, &tok)
			return tok.AccessToken, tok.DPoPProof, 200
		}},
	}
}

// TestProofPathsAgainstResourceServer: on the HTTP API (its Lambda handler
// fed API Gateway events carrying the verified IAM identity) and direct
// invoke, with PEM and KMS (moto) DPoP keys, the token and proof the vendor
// hands out are accepted by an RFC 9449 resource server (after its nonce
// demand), and every misuse is refused by it: no proof, a proof for
// another URL, a replayed proof, a proof for another token, a proof by
// another key (a thief holding the token and a key of its own). A caller
// outside allowed_callers gets neither token nor proof.
func TestProofPathsAgainstResourceServer(t *testing.T) {
	for _, kind := range []string{"pem", "kms"} {
		t.Run(kind, func(t *testing.T) {
			w := newProofWorld(t, kind == "kms")
			thiefKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			thief := &provider.Definition{Name: "thief", TokenURL: "https://as.example/token", ClientID: "c", ClientSecret: "s", DPoPPrivateKey: pemOf(thiefKey)}
			if err := thief.Validate(); err != nil {
				t.Fatal(err)
			}
			thiefProver := dpop.New(assertion.New(nil))
			const caller = "arn:aws:sts::123456789012:assumed-role/payments/x"
			for _, p := range w.paths() {
				t.Run(p.name, func(t *testing.T) {
					accounts, balance := w.rsURL+"/accounts/"+p.name, w.rsURL+"/balance/"+p.name
					// First request without a nonce: the resource server demands one.
					tok, proof, st := p.get(t, "bank", accounts, "", caller)
					if st != 200 || proof == "" {
						t.Fatalf("token and proof: status %d, proof given %v", st, proof != "")
					}
					if got := w.send(t, accounts, tok, proof); got != 401 || !strings.Contains(w.lastRefusal(), "nonce") {
						t.Fatalf("without the nonce: %d %q", got, w.lastRefusal())
					}
					nonce := w.resource.Nonce
					fresh := func(target string) (string, string) {
						tok, proof, st := p.get(t, "bank", target, nonce, caller)
						if st != 200 || proof == "" {
							t.Fatalf("token and proof for %s: status %d", target, st)
						}
						return tok, proof
					}
					tok, proof = fresh(accounts)
					if got := w.send(t, accounts+"?page=2", tok, proof); got != 200 {
						t.Fatalf("proof refused: %d %q", got, w.lastRefusal())
					}
					refusals := []struct {
						name, why string
						send      func() int
					}{
						{"replayed proof", "replayed", func() int { return w.send(t, accounts, tok, proof) }},
						{"no proof", "DPoP header", func() int { tok, _ := fresh(accounts); return w.send(t, accounts, tok, "") }},
						{"proof for another URL", "htu", func() int { tok, proof := fresh(accounts); return w.send(t, balance, tok, proof) }},
						{"proof for another token", "ath", func() int {
							tok, _ := fresh(accounts)
							_, other, st := p.get(t, "bank2", accounts, nonce, caller)
							if st != 200 || other == "" {
								t.Fatalf("bank2: status %d", st)
							}
							return w.send(t, accounts, tok, other)
						}},
						{"proof by another key", "another key", func() int {
							tok, _ := fresh(accounts)
							forged, err := thiefProver.Sign(context.Background(), thief, dpop.Request{Method: "GET", Target: accounts, AccessToken: tok, Nonce: nonce})
							if err != nil {
								t.Fatal(err)
							}
							return w.send(t, accounts, tok, forged.JWT)
						}},
					}
					for _, r := range refusals {
						if got := r.send(); got != 401 || !strings.Contains(w.lastRefusal(), r.why) {
							t.Fatalf("%s: status %d, refused for %q (want %q)", r.name, got, w.lastRefusal(), r.why)
						}
					}
					if p.name == "http-api" {
						if tok, proof, st := p.get(t, "bank", accounts, nonce, "arn:aws:sts::123456789012:assumed-role/other/x"); st != 403 || tok != "" || proof != "" {
							t.Fatalf("caller outside allowed_callers: status %d, token given %v, proof given %v", st, tok != "", proof != "")
						}
					}
				})
			}
			// One record per vend request: 2 before the refusal cases,
			// then 1 + 1 + 2 + 1 per path; the one refusal (http-api).
			if issued, refused := w.auditProofs(t); issued != 2*7 || refused != 1 {
				t.Fatalf("audit: %d records with a proof issued, %d refused:\n%s", issued, refused, w.audit.String())
			}
		})
	}
}

// TestExtensionPythonConsumerProofs: the built extension layer beside a
// Python consumer (standard library only) running docs/dpop.md's snippet
// as written, under the Runtime and Extensions APIs: the consumer gets a
// token and a proof per request from the extension (which asks the vend
// function each time), answers the resource server's nonce demand once
// and keeps the nonce for the origin, and is accepted; a replayed proof,
// a proof for another URL, no proof and a proof for another token are
// refused by the resource server.
func TestExtensionPythonConsumerProofs(t *testing.T) {
	// Unpooled, each proof is one vend invocation; with the pool
	// (TOKEN_VENDOR_DPOP_POOL=4) one invocation signs four proofs and the
	// extension hands out the spares one per request.
	for _, pool := range []int{0, 4} {
		t.Run(fmt.Sprintf("pool-%d", pool), func(t *testing.T) { extensionPythonConsumer(t, pool) })
	}
}

func extensionPythonConsumer(t *testing.T, pool int) {
	if _, err := exec.LookPath("python3"); err != nil {
		testenv.SkipOrFail(t, "python3 is needed for the consumer function")
	}
	blocks := testenv.DocBlocks(t, "python", "def dpop_request")
	if len(blocks) != 1 {
		t.Fatalf("%d Python DPoP samples in the docs, want 1", len(blocks))
	}
	w := newProofWorld(t, false)
	var vends atomic.Int64
	h := lambda.NewHandler(lambdafn.Invoke(w.open, nil, slog.New(slog.DiscardHandler), nil))
	svc := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		vends.Add(1)
		out, err := h.Invoke(r.Context(), body)
		if err != nil {
			rw.Header().Set("X-Amz-Function-Error", "Unhandled")
			json.NewEncoder(rw).Encode(map[string]string{"errorMessage": err.Error(), "errorType": wire.ErrorType(err)})
			return
		}
		rw.Write(out)
	}))
	defer svc.Close()

	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(blocks[0], "127.0.0.1:2790") {
		t.Fatal("the docs' sample does not name the extension's default port")
	}
	snippet := filepath.Join(t.TempDir(), "snippet.py")
	os.WriteFile(snippet, []byte(strings.ReplaceAll(blocks[0], "127.0.0.1:2790", "127.0.0.1:"+strconv.Itoa(port))), 0o600)
	bin, err := lambdart.BuildExtension("TokenExtensionArm64", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	runtime, _ := filepath.Abs("testdata/dpop_consumer.py")
	env, err := lambdart.StartEnv("consumer", []string{"python3", runtime}, []string{bin}, map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_SESSION_TOKEN": "session-" + testenv.RandomSuffix(),
		"TOKEN_VENDOR_FUNCTION":   "arn:aws:lambda:us-east-1:123456789012:function:token-vendor-VendFunction",
		"AWS_ENDPOINT_URL_LAMBDA": svc.URL, "TOKEN_VENDOR_PORT": strconv.Itoa(port), "DPOP_SNIPPET": snippet, "TOKEN_VENDOR_DPOP_POOL": strconv.Itoa(max(pool, 1))})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	call := func(ev map[string]string) []int {
		t.Helper()
		b, _ := json.Marshal(ev)
		inv, err := env.Invoke(b, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			Statuses []int `json:"statuses"`
			Error    string
		}
		if err := json.Unmarshal(inv.Payload, &out); err != nil || out.Error != "" || inv.ErrorType != "" {
			t.Fatalf("consumer answered %s (%s): %v\n%s", inv.Payload, inv.ErrorType, err, env.Output())
		}
		return out.Statuses
	}
	accounts, balance := w.rsURL+"/accounts", w.rsURL+"/balance"
	if got := call(map[string]string{"op": "request", "url": accounts}); fmt.Sprint(got) != "[200]" {
		t.Fatalf("first request: %v; refusals %q", got, w.resource.Refusals())
	}
	if r := w.resource.Refusals(); len(r) != 1 || !strings.Contains(r[0], "nonce") || vends.Load() != 2 {
		t.Fatalf("want one nonce demand answered with one more vend: refusals %q, %d vends", r, vends.Load())
	}
	if got := call(map[string]string{"op": "request", "url": balance}); fmt.Sprint(got) != "[200]" || len(w.resource.Refusals()) != 1 || vends.Load() != 3 {
		t.Fatalf("second request (nonce kept per origin): %v, refusals %q, %d vends", got, w.resource.Refusals(), vends.Load())
	}
	for _, c := range []struct {
		ev   map[string]string
		want string
		why  string
	}{
		{map[string]string{"op": "replay", "url": accounts}, "[200 401]", "replayed"},
		{map[string]string{"op": "other_url", "url": accounts, "other": balance}, "[401]", "htu"},
		{map[string]string{"op": "no_proof", "url": accounts}, "[401]", "DPoP header"},
		{map[string]string{"op": "other_token", "url": accounts, "other": "bank2"}, "[401]", "ath"},
	} {
		if got := call(c.ev); fmt.Sprint(got) != c.want || !strings.Contains(w.lastRefusal(), c.why) {
			t.Fatalf("%s: %v (want %s), refused for %q", c.ev["op"], got, c.want, w.lastRefusal())
		}
	}
	if w.resource.Accepted() != 3 {
		t.Fatalf("accepted %d requests, want 3", w.resource.Accepted())
	}
	// Unpooled: 3 vends above, then replay 1, other URL 1, no proof 1,
	// other token 2. Pooled: the first miss per (URL, nonce) signs 4, so
	// replay, other URL and no proof take the 3 spares for /accounts.
	if want := map[int]int64{0: 8, 4: 5}[pool]; vends.Load() != want {
		t.Fatalf("%d vend invocations, want %d", vends.Load(), want)
	}
	// One audit record per proof asked of the vend function, each saying a
	// proof was issued, none holding a JWT.
	if issued, refused := w.auditProofs(t); int64(issued) != vends.Load() || refused != 0 {
		t.Fatalf("audit: %d proofs issued for %d vends, %d refused", issued, vends.Load(), refused)
	}
}
