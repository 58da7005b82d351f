package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// countingStore counts every store operation.
type countingStore struct {
	vend.Store
	n atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, pk string, consistent bool) (*store.Item, error) {
	c.n.Add(1)
	return c.Store.Get(ctx, pk, consistent)
}

func (c *countingStore) Put(ctx context.Context, it *store.Item, expect int64) error {
	c.n.Add(1)
	return c.Store.Put(ctx, it, expect)
}

const relAccount = "123456789012"

// restricted adds a provider "payments" (the demo-k2 client) that only
// role/payments may have, and role/ops may refresh.
func (w *world) restricted() error {
	pay := *w.defs["demo-k2"]
	pay.Name = "payments"
	pay.AllowedCallers = []string{"arn:aws:iam::" + relAccount + ":role/payments", "arn:aws:iam::" + relAccount + ":role/ops"}
	pay.AdminCallers = []string{"arn:aws:iam::" + relAccount + ":role/ops"}
	if err := pay.Validate(); err != nil {
		return err
	}
	w.defs["payments"] = &pay
	return nil
}

func as(role string, path identity.Path) context.Context {
	arn := "arn:aws:sts::" + relAccount + ":assumed-role/" + role + "/s"
	return identity.NewContext(bg, identity.FromIAM(path, arn, relAccount, ""))
}

// forcedRefreshFlood: operators on 4 instances force-refresh one key at once,
// round after round 31 s apart (fake clock): one upstream request per round.
func forcedRefreshFlood(q bool) (row, error) {
	w, err := newWorld(true)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	if err := w.restricted(); err != nil {
		return row{}, err
	}
	rounds := 10
	if q {
		rounds = 2
	}
	var gates []*gate.Gate
	for _, v := range instances(w, 4, vend.Options{}) {
		gates = append(gates, gate.New(v, registry.NewStatic(w.defs), nil, nil))
	}
	if _, err := gates[0].Token(as("payments", identity.PathAPI), req("payments")); err != nil {
		return row{}, err
	}
	r := row{Fault: "forced-refresh flood: 100 operators on 4 instances force one key's refresh at once, each round 31 s apart", Runs: rounds, Recovery: "n/a",
		Expect: "1 upstream request per round (plus the first token); every caller gets the round's token"}
	var t tally
	for round := 0; round < rounds; round++ {
		w.clock.Advance(31 * time.Second)
		var wg sync.WaitGroup
		for _, g := range gates {
			for i := 0; i < 25; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tok, err := g.Refresh(as("ops", identity.PathAPI), req("payments"))
					t.add(tok, err, w.now(), -1)
				}()
			}
		}
		wg.Wait()
	}
	r.Calls, r.Errors, r.Below, r.Upstream = t.calls, t.errs, t.below, w.upstream("demo-k2")
	r.Pass = r.Errors == 0 && r.Below == 0 && r.Upstream == rounds+1 && len(t.tokens) == rounds
	return r, nil
}

// refusalFlood: callers without the right identity hammer a restricted
// provider on every path: not one store operation, not one upstream request.
func refusalFlood(q bool) (row, error) {
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	if err := w.restricted(); err != nil {
		return row{}, err
	}
	n := 2500
	if q {
		n = 250
	}
	cs := &countingStore{Store: w.store}
	var gates []*gate.Gate
	for range 4 {
		gates = append(gates, gate.New(w.instance(vend.Options{}, cs), registry.NewStatic(w.defs), nil, nil))
	}
	callers := []context.Context{
		as("reports", identity.PathAPI), as("payments-admin", identity.PathURL), as("pay", identity.PathInvoke),
		identity.NewContext(bg, identity.Anonymous(identity.PathInvoke, "no proof")),
		identity.NewContext(bg, identity.FromIAM(identity.PathAPI, "arn:aws:sts::999999999999:assumed-role/payments/s", "999999999999", "")),
	}
	r := row{Fault: "refusal flood: unlisted, look-alike, other-account and unverified callers ask a restricted provider on 4 instances", Runs: 1, Recovery: "n/a",
		Expect: "every call refused caller_not_allowed; 0 store operations, 0 upstream requests"}
	var wrong atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, ctx := gates[i%len(gates)], callers[i%len(callers)]
			var err error
			switch i % 3 {
			case 0:
				_, err = g.Token(ctx, req("payments"))
			case 1:
				_, err = g.Refresh(ctx, req("payments"))
			default:
				_, err = g.Revoke(ctx, req("payments"))
			}
			if !errors.Is(err, authz.ErrCallerNotAllowed) {
				wrong.Add(1)
			}
		}()
	}
	wg.Wait()
	r.Calls, r.Refused, r.Errors = n, n-int(wrong.Load()), int(wrong.Load())
	r.Upstream = w.upstream("demo-k2")
	ops := cs.n.Load()
	r.Pass = r.Errors == 0 && r.Upstream == 0 && ops == 0
	if ops != 0 {
		r.Expect += " (store operations seen: " + itoa(int(ops)) + ")"
	}
	return r, nil
}

// stsUnavailable: STS (moto behind a switch) goes down. Callers whose proof
// was verified keep working; new proofs to the restricted provider get a
// retryable IdentityUnavailable; the unrestricted provider is unaffected.
func stsUnavailable(q bool) (row, error) {
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	pay := *w.defs["demo-k2"]
	pay.Name, pay.AllowedCallers = "payments", []string{"arn:aws:iam::" + relAccount + ":root"}
	if err := pay.Validate(); err != nil {
		return row{}, err
	}
	w.defs["payments"] = &pay
	motoURL, err := url.Parse(os.Getenv(testenv.EnvMoto))
	if err != nil || motoURL.Host == "" {
		return row{}, errors.New("moto is not running")
	}
	sts, err := testenv.NewSwitchable(motoURL.String())
	if err != nil {
		return row{}, err
	}
	defer sts.Close()
	v := w.instance(vend.Options{}, nil)
	h := lambda.NewHandler(lambdafn.Invoke(gate.New(v, registry.NewStatic(w.defs), nil, nil), &identity.Verifier{Endpoint: sts.URL, VendorID: "rel"}, quietLog(), nil))
	// A user of moto's IAM, so its STS names a real user ARN.
	iamc := iam.NewFromConfig(testenv.Config(), func(o *iam.Options) { o.BaseEndpoint = aws.String(motoURL.String()) })
	user := "rel-" + testenv.RandomSuffix()
	if _, err := iamc.CreateUser(bg, &iam.CreateUserInput{UserName: aws.String(user)}); err != nil {
		return row{}, err
	}
	key, err := iamc.CreateAccessKey(bg, &iam.CreateAccessKeyInput{UserName: aws.String(user)})
	if err != nil {
		return row{}, err
	}
	creds := aws.Credentials{AccessKeyID: *key.AccessKey.AccessKeyId, SecretAccessKey: *key.AccessKey.SecretAccessKey}
	call := func(p string, proof *identity.Proof) string {
		ev, _ := json.Marshal(map[string]any{"provider": p, "identity": proof})
		_, err := h.Invoke(bg, ev)
		return wire.ErrorType(err)
	}
	signedAt := time.Now()
	known, err := identity.Sign(bg, creds, "us-east-1", sts.URL, "rel", signedAt)
	if err != nil {
		return row{}, err
	}
	if typ := call("payments", known); typ != "" {
		return row{}, errors.New("with STS up the proof was refused: " + typ)
	}
	sts.Down.Store(true)
	n := 300
	if q {
		n = 60
	}
	r := row{Fault: "STS unavailable: callers with a verified proof, callers with new proofs (restricted provider), and an unrestricted provider", Runs: 1, Recovery: "n/a",
		Expect: "verified callers served (restricted and unrestricted provider); new proofs refused IdentityUnavailable (retryable)"}
	for i := range n {
		var typ string
		switch i % 3 {
		case 0:
			typ = call("payments", known)
		case 1:
			// Signed a few seconds later than the verified one: another proof.
			fresh, _ := identity.Sign(bg, creds, "us-east-1", sts.URL, "rel", signedAt.Add(time.Duration(2+i%30)*time.Second))
			typ = call("payments", fresh)
			if typ == "IdentityUnavailable" {
				r.Refused++
				typ = ""
			} else {
				typ = "want IdentityUnavailable, got " + typ
			}
		default:
			// Unrestricted providers need a verified caller too (§11): the
			// identity already verified is served while STS is down.
			typ = call("demo-k2", known)
		}
		r.Calls++
		if typ != "" {
			r.Errors++
		}
	}
	r.Upstream = w.upstream("demo-k2")
	r.Pass = r.Errors == 0 && r.Refused == n/3 && r.Upstream == 2 // one token each for payments and demo-k2
	return r, nil
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
