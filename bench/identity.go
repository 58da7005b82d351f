package main

// What verified caller identity adds to a vend by direct invoke: the gate's
// decision and audit record, a cached identity proof, and a proof STS must
// verify (moto on loopback here: a real STS call adds a regional round trip).

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func identityBench(r *report) error {
	ctx := context.Background()
	moto, err := testenv.MotoEndpoint()
	if err != nil {
		return err
	}
	iamc := iam.NewFromConfig(testenv.Config(), func(o *iam.Options) { o.BaseEndpoint = aws.String(moto) })
	user := "bench-" + testenv.RandomSuffix()
	if _, err := iamc.CreateUser(ctx, &iam.CreateUserInput{UserName: aws.String(user)}); err != nil {
		return err
	}
	key, err := iamc.CreateAccessKey(ctx, &iam.CreateAccessKeyInput{UserName: aws.String(user)})
	if err != nil {
		return err
	}
	creds := aws.Credentials{AccessKeyID: *key.AccessKey.AccessKeyId, SecretAccessKey: *key.AccessKey.SecretAccessKey}

	sb := sandbox.New()
	up := httptest.NewServer(sb.Handler())
	defer up.Close()
	defs := sandbox.DemoProviders(sb, up.URL)
	pay := *defs["demo-k2"]
	pay.Name, pay.AllowedCallers = "payments", []string{"arn:aws:iam::123456789012:user/" + user}
	if err := pay.Validate(); err != nil {
		return err
	}
	defs["payments"] = &pay
	src := registry.NewStatic(defs)
	core := vend.New(src, vendtest.Client(nil), store.NewMemory(nil), vend.Options{DisableRefreshAhead: true})
	verifier := &identity.Verifier{Endpoint: moto, VendorID: benchVendor}
	// The audit record is written as in Lambda (JSON to a stream), here discarded.
	g := gate.New(core, src, slog.New(slog.NewJSONHandler(discard{}, nil)), nil)
	withGate := lambda.NewHandler(lambdafn.Invoke(g, verifier, slog.New(slog.DiscardHandler), nil))
	bare := lambda.NewHandler(lambdafn.Invoke(core, nil, slog.New(slog.DiscardHandler), nil))
	// Events are encoded once: encoding one (a proof is about 1 KB) is the
	// caller's cost, not the vend's.
	invoke := func(h lambda.Handler, ev []byte) error {
		_, err := h.Invoke(ctx, ev)
		return err
	}
	proof, err := identity.Sign(ctx, creds, "us-east-1", moto, benchVendor, time.Now())
	if err != nil {
		return err
	}
	unrestricted, _ := json.Marshal(map[string]any{"provider": "demo-k2"})
	unrestrictedProved, _ := json.Marshal(map[string]any{"provider": "demo-k2", "identity": proof})
	restricted, _ := json.Marshal(map[string]any{"provider": "payments", "identity": proof})
	n := 20000
	if r.quick {
		n = 500
	}
	cases := []struct {
		name string
		n    int
		f    func() error
	}{
		{"no gate (the core alone, as before)", n, func() error { return invoke(bare, unrestricted) }},
		// Providers without allowed_callers need a verified caller too (§11).
		{"gate, provider without allowed_callers, proof verified before (cached)", n, func() error { return invoke(withGate, unrestrictedProved) }},
		{"gate, restricted provider, proof verified before (cached)", n, func() error { return invoke(withGate, restricted) }},
		{"gate, restricted provider, proof not seen before: STS verifies (moto on loopback)", n / 20, func() error {
			// A vend instance that has not seen this proof: a fresh verifier.
			h := lambda.NewHandler(lambdafn.Invoke(g, &identity.Verifier{Endpoint: moto, VendorID: benchVendor}, slog.New(slog.DiscardHandler), nil))
			return invoke(h, restricted)
		}},
		{"client side: signing one proof (identity.Sign)", n, func() error {
			_, err := identity.Sign(ctx, creds, "us-east-1", moto, benchVendor, time.Now())
			return err
		}},
	}
	for _, c := range cases {
		row, err := measure(c.name, c.n, c.f)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		r.identity = append(r.identity, row)
	}
	return nil
}

// benchVendor is the vendor id proofs name: a vend function's ARN.
const benchVendor = "arn:aws:lambda:us-east-1:123456789012:function:tv-bench-VendFunction"

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func (r *report) writeIdentity(w func(string, ...any)) {
	if len(r.identity) == 0 {
		return
	}
	w("")
	w("## 10. What verified caller identity adds to a vend")
	w("")
	w("A direct invoke of the vend handler (`lambda.NewHandler(...).Invoke`, in process, token from L1) with and without the gate (docs/design.md §11: definition read, decision, one audit record). A proof is verified by STS once per vend instance and then answered from memory until it is 5 minutes old; the Go client and the extension reuse one proof for 4 minutes, so a consumer pays the uncached row about once per 4 minutes per vend instance. The uncached row goes to moto on loopback: a real STS call adds an in-region round trip (typically a few ms to tens of ms), which this machine cannot measure.")
	w("")
	latencyTable(w, "case", r.identity)
}
