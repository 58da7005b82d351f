package main

// Attacks on DPoP consumer proofs (docs/dpop.md, design.md §5): a proof
// seen once (in a log, a proxy, a crash dump) replayed; a proof made for
// another URL or another token presented with a token it was not made
// for; a caller outside allowed_callers asking for proofs. The vendor
// signs proofs with a key it never hands out, so the resource server's
// checks (tests/dpop, RFC 9449 §4.3) and the gate's decision are what
// stands between the attacker and the API.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	rs "github.com/token-vendor/token-vendor/tests/dpop"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func init() {
	registerAttack(120, "DPoP proof replay", attackDPoPReplay)
	registerAttack(121, "DPoP proof for another token or URL", attackDPoPMisdirected)
	registerAttack(122, "DPoP proof request by a caller not allowed", attackDPoPCallerNotAllowed)
}

// dpopAS is an authorization server that issues DPoP-bound tokens: each
// token is bound to the thumbprint of the jwk in the request's DPoP proof
// (what the resource server later checks a proof's key against).
type dpopAS struct {
	srv   *httptest.Server
	calls atomic.Int64
	mu    sync.Mutex
	bound map[string]string // token -> jkt
}

func newDPoPAS() *dpopAS {
	as := &dpopAS{bound: map[string]string{}}
	as.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		as.calls.Add(1)
		io.Copy(io.Discard, r.Body)
		jkt, err := proofJKT(r.Header.Get("DPoP"))
		if err != nil {
			w.WriteHeader(400)
			json.NewEncoder(w).Encode(map[string]string{"error": "invalid_dpop_proof"})
			return
		}
		tok := "dpop-" + testenv.RandomSuffix() + testenv.RandomSuffix()
		as.mu.Lock()
		as.bound[tok] = jkt
		as.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "DPoP", "expires_in": 3600})
	}))
	return as
}

func (as *dpopAS) jktOf(tok string) (string, error) {
	as.mu.Lock()
	defer as.mu.Unlock()
	if j, ok := as.bound[tok]; ok {
		return j, nil
	}
	return "", errors.New("unknown token")
}

// proofJKT is the RFC 7638 thumbprint of the jwk a proof carries.
func proofJKT(proof string) (string, error) {
	msg, err := jws.Parse([]byte(proof))
	if err != nil || len(msg.Signatures()) != 1 {
		return "", errors.New("not a JWS")
	}
	key, ok := msg.Signatures()[0].ProtectedHeaders().JWK()
	if !ok {
		return "", errors.New("no jwk")
	}
	sum, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}

// dpopWorld: providers bank and bank2 (each its own DPoP key, only
// role/payments listed) at a DPoP authorization server, the vendor's gate
// with a counted prover and store, an audit log, and a resource server.
type dpopWorld struct {
	w        *world
	as       *dpopAS
	st       *countingStore
	signs    *countingProver
	g        *gate.Gate
	audit    *testenv.SyncBuffer
	resource *rs.Server
	rsURL    string
	close    func()
}

type countingProver struct {
	*dpop.Pool
	n atomic.Int64
}

func (c *countingProver) Sign(ctx context.Context, def *provider.Definition, r dpop.Request) (dpop.Proof, error) {
	c.n.Add(1)
	return c.Pool.Sign(ctx, def, r)
}

func (c *countingProver) SignN(ctx context.Context, def *provider.Definition, r dpop.Request, n int) ([]dpop.Proof, error) {
	c.n.Add(int64(n))
	return c.Pool.SignN(ctx, def, r, n)
}

var (
	payments = identity.NewContext(bg, identity.FromIAM(identity.PathInvoke, "arn:aws:sts::"+relAccount+":assumed-role/payments/s", relAccount, ""))
	intruder = identity.NewContext(bg, identity.FromIAM(identity.PathInvoke, "arn:aws:sts::"+relAccount+":assumed-role/reports/s", relAccount, ""))
)

func newDPoPWorld() (*dpopWorld, error) {
	w, err := newWorld(false)
	if err != nil {
		return nil, err
	}
	as := newDPoPAS()
	for _, name := range []string{"bank", "bank2"} {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		d := &provider.Definition{Name: name, TokenURL: as.srv.URL + "/token", ClientID: name, ClientSecret: "s-" + name, AuthMethod: provider.AuthPost,
			DPoPPrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
			AllowedCallers: []string{"arn:aws:iam::" + relAccount + ":role/payments"}}
		if err := d.Validate(); err != nil {
			w.close()
			as.srv.Close()
			return nil, err
		}
		w.defs[name] = d
	}
	keys := assertion.New(nil)
	prover := dpop.New(keys)
	dw := &dpopWorld{w: w, as: as, st: &countingStore{Store: w.store}, signs: &countingProver{Pool: dpop.NewPool(prover)}, audit: &testenv.SyncBuffer{}}
	v := w.instanceUp(vend.Options{}, dw.st, &upstream.Client{DPoP: prover, MaxAttempts: 1})
	dw.g = gate.New(v, registry.NewStatic(w.defs), slog.New(slog.NewJSONHandler(dw.audit, nil)), nil).WithProver(dw.signs)
	dw.resource = &rs.Server{JKTOf: as.jktOf}
	rsSrv := httptest.NewServer(dw.resource)
	dw.rsURL = rsSrv.URL
	dw.close = func() { rsSrv.Close(); as.srv.Close(); w.close() }
	return dw, nil
}

// get is the consumer's token and a proof for GET target.
func (dw *dpopWorld) get(provider, target string) (string, string, error) {
	t, p, err := dw.g.TokenProof(payments, vend.Request{Provider: provider, Scope: "read", MinTTL: -1}, dpop.Request{Method: "GET", Target: target})
	if err == nil && p == "" {
		err = errors.New("no proof issued")
	}
	return t.AccessToken, p, err
}

// send presents token and proof to the resource server; true if accepted.
func (dw *dpopWorld) send(target, token, proof string) (bool, error) {
	req, _ := http.NewRequest("GET", target, nil)
	req.Header.Set("Authorization", "DPoP "+token)
	req.Header.Set("DPoP", proof)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200, nil
}

func (dw *dpopWorld) lastRefusal() string {
	r := dw.resource.Refusals()
	if len(r) == 0 {
		return ""
	}
	return r[len(r)-1]
}

// attackDPoPReplay: the consumer's proof, used once, is captured and
// replayed against the same URL with the same token.
func attackDPoPReplay(q bool) (attackRow, error) {
	dw, err := newDPoPWorld()
	if err != nil {
		return attackRow{}, err
	}
	defer dw.close()
	r := attackRow{Expect: "every replay refused by the resource server (jti seen); no token, store or provider request caused"}
	target := dw.rsURL + "/accounts"
	tok, proof, err := dw.get("bank", target)
	if err != nil {
		return r, err
	}
	if ok, err := dw.send(target, tok, proof); err != nil || !ok {
		return r, errors.New("the consumer's own request was refused: " + dw.lastRefusal())
	}
	up, ops := dw.as.calls.Load(), dw.st.n.Load()
	for range attempts(q) {
		r.Attempts++
		ok, err := dw.send(target, tok, proof)
		if err != nil {
			return r, err
		}
		if ok {
			r.Leaked++
		} else if strings.Contains(dw.lastRefusal(), "replayed") {
			r.Refused++
		}
	}
	r.Upstream, r.StoreOps = int(dw.as.calls.Load()-up), int(dw.st.n.Load()-ops)
	r.Pass = r.Leaked == 0 && r.Refused == r.Attempts && r.Upstream == 0 && r.StoreOps == 0
	return r, nil
}

// attackDPoPMisdirected: an attacker holding fresh proofs the vendor
// signed, each for another URL (same origin) or for another provider's
// token, presents them with the victim's token.
func attackDPoPMisdirected(q bool) (attackRow, error) {
	dw, err := newDPoPWorld()
	if err != nil {
		return attackRow{}, err
	}
	defer dw.close()
	r := attackRow{Expect: "refused by the resource server (htu, ath); no token, store or provider request caused"}
	victim := dw.rsURL + "/payments"
	tok, _, err := dw.get("bank", victim)
	if err != nil {
		return r, err
	}
	// Proofs gathered first (they cost the vendor, not the attack).
	type shot struct{ proof, why string }
	var shots []shot
	for i := range attempts(q) {
		if i%2 == 0 {
			_, p, err := dw.get("bank", dw.rsURL+"/balance")
			if err != nil {
				return r, err
			}
			shots = append(shots, shot{p, "htu"})
		} else {
			_, p, err := dw.get("bank2", victim)
			if err != nil {
				return r, err
			}
			shots = append(shots, shot{p, "ath"})
		}
	}
	up, ops := dw.as.calls.Load(), dw.st.n.Load()
	for _, s := range shots {
		r.Attempts++
		ok, err := dw.send(victim, tok, s.proof)
		if err != nil {
			return r, err
		}
		if ok {
			r.Leaked++
		} else if strings.Contains(dw.lastRefusal(), s.why) {
			r.Refused++
		}
	}
	r.Upstream, r.StoreOps = int(dw.as.calls.Load()-up), int(dw.st.n.Load()-ops)
	r.Pass = r.Leaked == 0 && r.Refused == r.Attempts && r.Upstream == 0 && r.StoreOps == 0
	return r, nil
}

// attackDPoPCallerNotAllowed: a role outside the providers'
// allowed_callers asks for a token and proofs, one at a time and a pool's
// worth at once (dpop_count). Each is refused before any signature, store
// read or provider request, with one audit record.
func attackDPoPCallerNotAllowed(q bool) (attackRow, error) {
	dw, err := newDPoPWorld()
	if err != nil {
		return attackRow{}, err
	}
	defer dw.close()
	r := attackRow{Expect: "refused caller_not_allowed before signing, the store or the provider; one audit record each, without a proof"}
	target := dw.rsURL + "/accounts"
	for i := range attempts(q) {
		r.Attempts++
		req := vend.Request{Provider: []string{"bank", "bank2"}[i%2], Scope: "read", MinTTL: -1}
		var proofs []string
		var tok vend.Token
		if i%3 == 0 {
			tok, proofs, err = dw.g.TokenProofs(intruder, req, dpop.Request{Method: "GET", Target: target}, dpop.MaxProofs)
		} else {
			var p string
			tok, p, err = dw.g.TokenProof(intruder, req, dpop.Request{Method: "GET", Target: target})
			if p != "" {
				proofs = append(proofs, p)
			}
		}
		if tok.AccessToken != "" || len(proofs) > 0 {
			r.Leaked++
		} else if err != nil {
			r.Refused++
		}
	}
	records, withProof := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(dw.audit.String()), "\n") {
		if strings.Contains(line, `"msg":"audit"`) {
			records++
		}
		if strings.Contains(line, "dpop_proof") || strings.Contains(line, "eyJ") {
			withProof++
		}
	}
	r.Upstream, r.StoreOps = int(dw.as.calls.Load()), int(dw.st.n.Load())
	r.Pass = r.Leaked == 0 && r.Refused == r.Attempts && r.Upstream == 0 && r.StoreOps == 0 &&
		dw.signs.n.Load() == 0 && records == r.Attempts && withProof == 0
	return r, nil
}
