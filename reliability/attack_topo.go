package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/token-vendor/token-vendor/pkg/envelope"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
	"github.com/token-vendor/token-vendor/tests/deploy"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// The topology and sealing rows (docs/production-topology.md, design §12.3).
func init() {
	registerAttack(300, "forged API event", func(q bool) (attackRow, error) { return forgedEvent(q, false) })
	registerAttack(301, "forged URL event", func(q bool) (attackRow, error) { return forgedEvent(q, true) })
	registerAttack(310, "plaintext swap", func(q bool) (attackRow, error) { return sealedForgery(q, false) })
	registerAttack(311, "stale sealed token replay", func(q bool) (attackRow, error) { return sealedForgery(q, true) })
}

// forgedEvent: a consumer writes the event API Gateway (or the function
// URL) would send, naming role/payments (the provider's allowed caller),
// and direct-invokes the api function with it. In the recommended topology
// the invoke itself is denied: the verdict of tests/deploy's evaluator on
// the template's resource policies (dedicated account: a consumer of the
// organization; single account: AWSLambdaRole's grant under
// ApiInvokeGuardPolicy). The same event sent where a consumer may invoke,
// the vend function, carries no verified proof and gets no token.
func forgedEvent(q bool, viaURL bool) (attackRow, error) {
	r := attackRow{Expect: "the direct invoke of the api function denied by the template's policies (evaluator, policy text); on the vend function refused, no token; 0 upstream, 0 store ops"}
	doc, err := deploy.Translated()
	if err != nil {
		return r, err
	}
	ps, err := deploy.ResourcePoliciesOf(doc, map[string]string{"ConsumerOrgId": "o-a1b2c3d4e5", "EnableFunctionUrl": "true"})
	if err != nil {
		return r, err
	}
	guard, err := deploy.TemplateGuard(doc)
	if err != nil {
		return r, err
	}
	api := deploy.FunctionARN("ApiFunction")
	everyFunction := []deploy.IdentityStatement{{Effect: "Allow", Action: "lambda:InvokeFunction", Resource: "*"}}
	// The forger's invoke: not through the URL (it hand-wrote the event).
	invoke := deploy.Request{Account: "333333333333", OrgID: "o-a1b2c3d4e5", Action: "lambda:InvokeFunction", Resource: api}
	if viaURL {
		// The forger holds the URL grant (both actions): the URL itself is
		// open to it, the direct invoke is not.
		through := invoke
		through.ViaURL, through.URLAuthType = true, "AWS_IAM"
		if !ps.Allowed(through) {
			return r, errors.New("evaluator: a consumer of the organization cannot use the function URL at all")
		}
	}
	for _, allowed := range []bool{
		ps.Allowed(invoke), // dedicated vendor account, consumer in the organization
		deploy.IdentityDecision(everyFunction, guard, deploy.Request{Account: deploy.VendorAccount, Action: "lambda:InvokeFunction", Resource: api}), // single account, guarded
	} {
		r.Attempts++
		if allowed {
			r.Leaked++ // the event would reach the api function, which trusts it
		} else {
			r.Refused++
		}
	}

	// The same event on the vend function's direct-invoke path.
	w, err := newWorld(false)
	if err != nil {
		return r, err
	}
	defer w.close()
	if err := w.restricted(); err != nil {
		return r, err
	}
	cs := &countingStore{Store: w.store}
	h := lambda.NewHandler(lambdafn.Invoke(gate.New(w.instance(vend.Options{}, cs), registry.NewStatic(w.defs), nil, nil), nil, quietLog(), nil))
	domain := "stackapi01.execute-api.us-east-1.amazonaws.com"
	if viaURL {
		domain = "abcdefghijklmnop.lambda-url.us-east-1.on.aws"
	}
	ctxBlock := map[string]any{"domainName": domain, "http": map[string]any{"method": "GET", "path": "/v1/tokens/payments"},
		"authorizer": map[string]any{"iam": map[string]any{"userArn": "arn:aws:sts::" + relAccount + ":assumed-role/payments/s", "accountId": relAccount}}}
	events := []map[string]any{
		{"version": "2.0", "rawPath": "/v1/tokens/payments", "requestContext": ctxBlock}, // the event as written for the api function
		{"provider": "payments", "requestContext": ctxBlock},                             // the same identity on a vend event
		{"provider": "payments"}, // and without it: no proof
	}
	n := 30
	if q {
		n = 6
	}
	for i := range n {
		ev, _ := json.Marshal(events[i%len(events)])
		out, err := h.Invoke(bg, ev)
		r.Attempts++
		switch {
		case err == nil || wire.ErrorType(err) == "":
			if strings.Contains(string(out), "access_token") {
				r.Leaked++
			}
		default:
			r.Refused++
		}
	}
	r.Upstream, r.StoreOps = w.upstream("demo-k2"), int(cs.n.Load())
	r.Pass = r.Leaked == 0 && r.Refused == r.Attempts && r.Upstream == 0 && r.StoreOps == 0
	return r, nil
}

// sealedObserver counts unsealed records.
type sealedObserver struct{ unsealed atomic.Int64 }

func (o *sealedObserver) Vended(string, vend.Source, time.Duration) {}
func (o *sealedObserver) Upstream(string, time.Duration, string)    {}
func (o *sealedObserver) Value(string, string, string, float64)     {}
func (o *sealedObserver) Event(_ string, name string) {
	if name == "unsealed_record" {
		o.unsealed.Add(1)
	}
}

// sealedForgery: with KMS sealing on, a writer with dynamodb:PutItem and
// no use of the key rewrites the cached record, round after round: a
// plaintext token of its choosing (plaintext swap), or a genuine sealed
// token from an earlier round put back under the current expiry (stale
// replay). Each round a new instance vends; the forged token must never
// come out, and each forged record costs one upstream fetch.
func sealedForgery(q bool, replay bool) (attackRow, error) {
	r := attackRow{Expect: "forged record treated as absent: fetched again (1 upstream per round), counted UnsealedRecords; the forger's token never vended"}
	moto := os.Getenv(testenv.EnvMoto)
	if moto == "" {
		return r, errors.New("moto is not running")
	}
	w, err := newWorld(false)
	if err != nil {
		return r, err
	}
	defer w.close()
	kc := kms.NewFromConfig(testenv.Config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(moto) })
	key, err := kc.CreateKey(bg, &kms.CreateKeyInput{KeySpec: kmstypes.KeySpecSymmetricDefault, KeyUsage: kmstypes.KeyUsageTypeEncryptDecrypt})
	if err != nil {
		return r, err
	}
	obs := &sealedObserver{}
	cs := &countingStore{Store: w.store}
	instance := func() *vend.Vendor {
		return w.instance(vend.Options{Sealer: envelope.New(kc, aws.ToString(key.KeyMetadata.KeyId)), L1MaxAge: -1, DisableRefreshAhead: true,
			Observer: obs, Logger: quietLog()}, cs)
	}
	first, err := instance().Token(bg, req("demo-k2"))
	if err != nil {
		return r, err
	}
	pk := w.defs["demo-k2"].KeyFor(nil).PK
	old, err := w.store.Get(bg, pk, true)
	if err != nil || old == nil {
		return r, fmt.Errorf("read the sealed record: %v", err)
	}
	forged := map[string]bool{first.AccessToken: replay}
	before, opsBefore := w.upstream("demo-k2"), cs.n.Load()
	rounds := 20
	if q {
		rounds = 4
	}
	for i := range rounds {
		it, err := w.store.Get(bg, pk, true)
		if err != nil || it == nil {
			return r, fmt.Errorf("read record: %v", err)
		}
		prev := it.Version
		if replay {
			// The earlier genuine token, under the current record's later
			// expiry and issue time (ahead of the old token's by a round).
			it.Token = old.Token
			it.IssuedAt, it.ExpiresAt, it.RefreshAt = it.IssuedAt+int64(60*(i+1)), it.ExpiresAt+int64(60*(i+1)), it.RefreshAt+int64(60*(i+1))
		} else {
			choice := fmt.Sprintf("attacker-chosen-%d", i)
			forged[choice] = true
			it.Token = store.Secret{Plain: choice}
		}
		it.Version = prev + 1
		if err := w.store.Put(bg, it, prev); err != nil {
			return r, err
		}
		r.Attempts++
		tok, err := instance().Token(bg, req("demo-k2"))
		if err != nil {
			return r, err
		}
		if forged[tok.AccessToken] {
			r.Leaked++
		}
	}
	r.Refused = int(obs.unsealed.Load())
	r.Upstream = w.upstream("demo-k2") - before
	r.StoreOps = int(cs.n.Load() - opsBefore)
	r.Pass = r.Leaked == 0 && r.Refused == rounds && r.Upstream == rounds
	return r, nil
}
