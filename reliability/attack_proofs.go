package main

// Attacks on identity proofs and caller patterns (docs/design.md §11): a
// proof bent so the vendor and STS would read different signed headers, a
// header value no HTTP request may carry, a role that only looks like a
// listed team's, and a proof made for another stack's vend function. STS is
// moto without signature checks here, so a bent proof that reached it
// would be answered with the victim's identity: every refusal must be the
// vendor's own, before STS, the store or the provider.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func init() {
	registerAttack(110, "duplicate SignedHeaders", attackDuplicateSignedHeaders)
	registerAttack(111, "malformed header value", attackMalformedHeaderValue)
	registerAttack(112, "path-spoofed role", attackPathSpoofedRole)
	registerAttack(113, "proof for another stack's vendor id", attackOtherStack)
}

// relVendFunction is the vend function under attack; its ARN is the vendor id.
const relVendFunction = "arn:aws:lambda:us-east-1:" + relAccount + ":function:tv-rel-VendFunction"

// proofWorld is a vend function (its gate, a verifier reading the vendor id
// from the invocation's context, a counted store) with a provider only the
// victim, a moto IAM user, may have.
type proofWorld struct {
	w      *world
	st     *countingStore
	h      lambda.Handler
	moto   string
	victim aws.Credentials
}

func newProofWorld() (*proofWorld, error) {
	w, err := newWorld(false)
	if err != nil {
		return nil, err
	}
	moto := os.Getenv(testenv.EnvMoto)
	if moto == "" {
		w.close()
		return nil, errors.New("moto is not running")
	}
	iamc := iam.NewFromConfig(testenv.Config(), func(o *iam.Options) { o.BaseEndpoint = aws.String(moto) })
	user := "rel-victim-" + testenv.RandomSuffix()
	if _, err := iamc.CreateUser(bg, &iam.CreateUserInput{UserName: aws.String(user)}); err != nil {
		w.close()
		return nil, err
	}
	key, err := iamc.CreateAccessKey(bg, &iam.CreateAccessKeyInput{UserName: aws.String(user)})
	if err != nil {
		w.close()
		return nil, err
	}
	pay := *w.defs["demo-k2"]
	pay.Name, pay.AllowedCallers = "payments", []string{"arn:aws:iam::" + relAccount + ":user/" + user}
	if err := pay.Validate(); err != nil {
		w.close()
		return nil, err
	}
	w.defs["payments"] = &pay
	pw := &proofWorld{w: w, st: &countingStore{Store: w.store}, moto: moto,
		victim: aws.Credentials{AccessKeyID: *key.AccessKey.AccessKeyId, SecretAccessKey: *key.AccessKey.SecretAccessKey}}
	v := w.instance(vend.Options{}, pw.st)
	pw.h = lambda.NewHandler(lambdafn.Invoke(gate.New(v, registry.NewStatic(w.defs), nil, nil), &identity.Verifier{Endpoint: moto}, quietLog(), nil))
	return pw, nil
}

// invoke invokes the vend function as Lambda does (the context names it)
// with proof for payments; it returns the errorType and message, "" when a
// token was handed out.
func (pw *proofWorld) invoke(proof *identity.Proof) (string, string) {
	ev, _ := json.Marshal(map[string]any{"provider": "payments", "scope": "read", "identity": proof})
	ctx := lambdacontext.NewContext(bg, &lambdacontext.LambdaContext{InvokedFunctionArn: relVendFunction})
	_, err := pw.h.Invoke(ctx, ev)
	if err != nil {
		return wire.ErrorType(err), err.Error()
	}
	return "", ""
}

// sign is the victim's proof for vendor, signed at.
func (pw *proofWorld) sign(vendor string, at time.Time) (*identity.Proof, error) {
	return identity.Sign(bg, pw.victim, "us-east-1", pw.moto, vendor, at)
}

// run makes n attempts, each with the proof attempt(i) returns, and counts
// the tokens obtained and the refusals carrying reason.
func (pw *proofWorld) run(name string, n int, reason string, attempt func(i int) (*identity.Proof, error)) (attackRow, error) {
	r := attackRow{Attack: name}
	for i := range n {
		p, err := attempt(i)
		if err != nil {
			return r, err
		}
		r.Attempts++
		switch typ, msg := pw.invoke(p); {
		case typ == "":
			r.Leaked++
		case typ == "CallerNotAllowed" && strings.Contains(msg, reason):
			r.Refused++
		}
	}
	r.Upstream, r.StoreOps = pw.w.upstream("payments"), int(pw.st.n.Load())
	r.Pass = r.Leaked == 0 && r.Refused == n && r.Upstream == 0 && r.StoreOps == 0
	return r, nil
}

func attempts(q bool) int {
	if q {
		return 20
	}
	return 200
}

// editProofHeaders changes a proof's headers.
func editProofHeaders(p *identity.Proof, edit func(map[string]string)) *identity.Proof {
	raw, _ := base64.StdEncoding.DecodeString(p.Headers)
	var h map[string][]string
	_ = json.Unmarshal(raw, &h)
	flat := map[string]string{}
	for k, v := range h {
		flat[k] = v[0]
	}
	edit(flat)
	b, _ := json.Marshal(flat)
	q := *p
	q.Headers = base64.StdEncoding.EncodeToString(b)
	return &q
}

// attackDuplicateSignedHeaders: the victim's proof made for another service
// (Vault: X-Token-Vendor-Id not signed) is replayed with the vendor header
// added and a second SignedHeaders naming it appended. A vendor that kept
// the last SignedHeaders while STS read the first would hand out the
// victim's token; the strict parser refuses it as proof_malformed.
func attackDuplicateSignedHeaders(q bool) (attackRow, error) {
	pw, err := newProofWorld()
	if err != nil {
		return attackRow{}, err
	}
	defer pw.w.close()
	now := time.Now()
	r, err := pw.run("", attempts(q), identity.ProofMalformed, func(i int) (*identity.Proof, error) {
		p, err := pw.sign("vault", now.Add(-time.Duration(i)*time.Second))
		if err != nil {
			return nil, err
		}
		return editProofHeaders(p, func(h map[string]string) {
			a := h["Authorization"]
			s := a[strings.Index(a, "SignedHeaders="):]
			s = s[:strings.Index(s, ",")]
			h["Authorization"] = strings.Replace(a, ";x-token-vendor-id", "", 1) + ", " + s
			h[identity.VendorHeader] = relVendFunction
		}), nil
	})
	r.Expect = "refused proof_malformed before STS; no token, store or provider request"
	return r, err
}

// attackMalformedHeaderValue: the victim's proof with CR/LF (header
// injection), NUL or an overlong value in a header is the caller's error,
// proof_malformed: never sent, never a retryable identity_unavailable.
func attackMalformedHeaderValue(q bool) (attackRow, error) {
	pw, err := newProofWorld()
	if err != nil {
		return attackRow{}, err
	}
	defer pw.w.close()
	good, err := pw.sign(relVendFunction, time.Now())
	if err != nil {
		return attackRow{}, err
	}
	bad := []func(map[string]string){
		func(h map[string]string) {
			h["Content-Type"] += "\r\nX-Amz-Target: AWSSecurityTokenServiceV20110615.AssumeRole"
		},
		func(h map[string]string) { h["X-Amz-Date"] += "\n" },
		func(h map[string]string) { h["Content-Type"] += "\x00" },
		func(h map[string]string) { h["X-Padding"] = strings.Repeat("a", 10000) },
		func(h map[string]string) { h["Bad Header"] = "x" },
	}
	r, err := pw.run("", attempts(q), identity.ProofMalformed, func(i int) (*identity.Proof, error) {
		return editProofHeaders(good, bad[i%len(bad)]), nil
	})
	r.Expect = "refused proof_malformed (not IdentityUnavailable); no token, store or provider request"
	return r, err
}

// attackOtherStack: the victim's proof made for another stack's vend
// function of the same name (another account, another region, or the bare
// name every stack used to share) is replayed to this one.
func attackOtherStack(q bool) (attackRow, error) {
	pw, err := newProofWorld()
	if err != nil {
		return attackRow{}, err
	}
	defer pw.w.close()
	now := time.Now()
	others := []string{
		"arn:aws:lambda:us-east-1:210987654321:function:tv-rel-VendFunction",
		"arn:aws:lambda:eu-west-1:" + relAccount + ":function:tv-rel-VendFunction",
		"tv-rel-VendFunction",
	}
	r, err := pw.run("", attempts(q), identity.ProofOtherVendor, func(i int) (*identity.Proof, error) {
		return pw.sign(others[i%len(others)], now.Add(-time.Duration(i)*time.Second))
	})
	r.Expect = "refused proof_for_another_vendor; no token, store or provider request"
	return r, err
}

// attackPathSpoofedRole: a provider meant for the payouts team's roles,
// written role/teams/payouts/payouts-*, would admit role/sandbox/payouts-evil
// (a session's ARN carries no path). The definition is refused when it
// loads (one refusal), so the provider does not exist; with the team's
// roles listed by exact name instead, payouts-evil's sessions are refused.
func attackPathSpoofedRole(q bool) (attackRow, error) {
	w, err := newWorld(false)
	if err != nil {
		return attackRow{}, err
	}
	defer w.close()
	r := attackRow{Expect: "definition refused at load (allowed_callers[0]: wildcard with a path); the spoofed role refused; no token, store or provider request"}
	spoofed := *w.defs["demo-k2"]
	spoofed.Name, spoofed.AllowedCallers = "payouts", []string{"arn:aws:iam::" + relAccount + ":role/teams/payouts/payouts-*"}
	r.Attempts++
	if err := spoofed.Validate(); err != nil && strings.Contains(err.Error(), "allowed_callers[0]") && strings.Contains(err.Error(), "path") {
		r.Refused++
	} else {
		w.defs["payouts"] = &spoofed // loaded: the attempts below show what it admits
	}
	exact := *w.defs["demo-k2"]
	exact.Name, exact.AllowedCallers = "payouts-exact", []string{"arn:aws:iam::" + relAccount + ":role/teams/payouts/payouts-api"}
	if err := exact.Validate(); err != nil {
		return r, err
	}
	w.defs["payouts-exact"] = &exact
	st := &countingStore{Store: w.store}
	g := gate.New(w.instance(vend.Options{}, st), registry.NewStatic(w.defs), nil, nil)
	evil := identity.NewContext(context.Background(), identity.FromIAM(identity.PathAPI, "arn:aws:sts::"+relAccount+":assumed-role/payouts-evil/s", relAccount, ""))
	for i := range attempts(q) {
		name := []string{"payouts", "payouts-exact"}[i%2]
		r.Attempts++
		if _, err := g.Token(evil, vend.Request{Provider: name, Scope: "read", MinTTL: -1}); err != nil {
			r.Refused++
		} else {
			r.Leaked++
		}
	}
	r.Upstream, r.StoreOps = w.upstream("demo-k2"), int(st.n.Load())
	r.Pass = r.Leaked == 0 && r.Refused == r.Attempts && r.Upstream == 0 && r.StoreOps == 0
	return r, nil
}
