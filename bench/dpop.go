package main

// What a DPoP proof adds to each resource request (docs/dpop.md §3): the
// consumer asks the vendor for the (cached) token and a proof for the
// request, on each path — the vend function through the AWS SDK's Lambda
// Invoke (the Go client, direct invoke), the HTTP API (the Go client over
// HTTP), and the extension's loopback endpoint, unpooled (one vend
// invocation per proof) and pooled (TOKEN_VENDOR_DPOP_POOL=8: one vend
// invocation signs 8). Keys: PEM ES256 in process, KMS ES256 through moto
// (the vend side pools KMS proofs, dpop.Pool). Invoke and HTTP go over
// loopback, so a real Lambda Invoke round trip (~15 ms in a region) comes
// on top of every row that invokes the vend function.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"

	"github.com/token-vendor/token-vendor/pkg/assertion"
	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/dpop"
	"github.com/token-vendor/token-vendor/pkg/extension"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// dpopRow is one path's cost per resource request, and the vend
// invocations (or HTTP API requests) it took.
type dpopRow struct {
	latencyRow
	Requests, VendCalls int64
}

func dpopBench(r *report) error {
	ctx := context.Background()
	moto, err := testenv.MotoEndpoint()
	if err != nil {
		return err
	}
	kmsAPI := kms.NewFromConfig(testenv.Config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(moto) })
	key, err := kmsAPI.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: kmstypes.KeySpecEccNistP256, KeyUsage: kmstypes.KeyUsageTypeSignVerify})
	if err != nil {
		return err
	}
	// An authorization server issuing DPoP-bound tokens (its binding is
	// the tests' business, tests/oidc; here only the cost is measured).
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"dpop-bound-%s","token_type":"DPoP","expires_in":3600}`, testenv.RandomSuffix())
	}))
	defer as.Close()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(ec)
	defs := map[string]*provider.Definition{
		"pem": {Name: "pem", TokenURL: as.URL + "/token", ClientID: "c", ClientSecret: "s", AuthMethod: provider.AuthPost,
			DPoPPrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))},
		"kms": {Name: "kms", TokenURL: as.URL + "/token", ClientID: "c", ClientSecret: "s", AuthMethod: provider.AuthPost,
			DPoPKMSKeyID: aws.ToString(key.KeyMetadata.KeyId), DPoPSigningAlg: "ES256"},
	}
	for _, d := range defs {
		if err := d.Validate(); err != nil {
			return err
		}
	}
	keys := assertion.New(kmsAPI)
	prover := dpop.New(keys)
	provs := registry.NewStatic(defs)
	v := vend.New(provs, &upstream.Client{DPoP: prover, MaxAttempts: 1}, store.NewMemory(nil), vend.Options{DisableRefreshAhead: true})
	// Identity is not what this section measures (§10 does): the consumers
	// here carry no proof, so the gate admits unverified callers.
	g := gate.New(v, provs, slog.New(slog.DiscardHandler), nil).WithProver(dpop.NewPool(prover)).WithPolicy(authz.Policy{AllowUnverified: true})

	// The Lambda Invoke API on loopback, running the vend handler.
	var invocations atomic.Int64
	h := lambda.NewHandler(lambdafn.Invoke(g, nil, slog.New(slog.DiscardHandler), nil))
	invokeSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		invocations.Add(1)
		body, _ := io.ReadAll(req.Body)
		out, err := h.Invoke(req.Context(), body)
		if err != nil {
			w.Header().Set("X-Amz-Function-Error", "Unhandled")
			json.NewEncoder(w).Encode(map[string]string{"errorMessage": err.Error()})
			return
		}
		w.Write(out)
	}))
	defer invokeSrv.Close()
	lc := awslambda.NewFromConfig(testenv.Config(), func(o *awslambda.Options) { o.BaseEndpoint = aws.String(invokeSrv.URL) })
	invoker := client.NewLambdaInvoker(lc, "vend")
	// The HTTP API (the api function's handler; the caller's identity as
	// API Gateway's AWS_IAM authorization would give it).
	api := httpapi.New(g, provs, nil, nil)
	apiSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		invocations.Add(1)
		c := identity.FromIAM(identity.PathAPI, "arn:aws:sts::123456789012:assumed-role/consumer/s", "123456789012", "")
		api.ServeHTTP(w, req.WithContext(identity.NewContext(req.Context(), c)))
	}))
	defer apiSrv.Close()

	n := 1000
	if r.quick {
		n = 40
	}
	const target = "https://api.bank.example/accounts"
	for _, k := range []string{"pem", "kms"} {
		viaInvoke := client.New(invoker)
		viaAPI := client.New(client.NewHTTPFetcher(apiSrv.URL, nil, ""))
		unpooled := extension.New(invoker, "session", nil).Handler()
		pooled := extension.New(invoker, "session", nil).WithProofPool(extension.MaxProofPool).Handler()
		local := func(hh http.Handler) func() error {
			path := "/v1/tokens/" + k + "?dpop_htm=GET&dpop_htu=" + target
			return func() error {
				req := httptest.NewRequest("GET", path, nil)
				req.Header.Set(extension.Header, "session")
				rec := httptest.NewRecorder()
				hh.ServeHTTP(rec, req)
				if rec.Code != 200 {
					return fmt.Errorf("extension: %d %s", rec.Code, rec.Body.String())
				}
				return nil
			}
		}
		proof := func(c *client.Client) func() error {
			return func() error {
				t, err := c.Proof(ctx, client.Request{Provider: k}, "GET", target, "")
				if err == nil && t.DPoPProof == "" {
					err = fmt.Errorf("no proof")
				}
				return err
			}
		}
		keyName := map[string]string{"pem": "PEM ES256", "kms": "KMS ES256 (moto)"}[k]
		for _, c := range []struct {
			name string
			f    func() error
		}{
			{"direct invoke (Go client, Lambda Invoke on loopback), " + keyName, proof(viaInvoke)},
			{"HTTP API (Go client over HTTP on loopback), " + keyName, proof(viaAPI)},
			{"extension, unpooled (one vend invocation per proof), " + keyName, local(unpooled)},
			{"extension, pooled (TOKEN_VENDOR_DPOP_POOL=8), " + keyName, local(pooled)},
		} {
			calls := func() int64 { return invocations.Load() }
			var requests, before int64
			counted := func() error { requests++; return c.f() }
			before = calls()
			row, err := measure(c.name, n, counted)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			r.dpop = append(r.dpop, dpopRow{latencyRow: row, Requests: requests, VendCalls: calls() - before})
		}
	}
	return nil
}

func (r *report) writeDPoP(w func(string, ...any)) {
	if len(r.dpop) == 0 {
		return
	}
	w("")
	w("## 12. What a DPoP proof adds to each resource request")
	w("")
	w("A consumer of a DPoP-bound token asks the vendor for a proof per resource request (the token itself comes from the cache). Invoke and HTTP go over loopback here: a real Lambda Invoke or HTTP API round trip (≈ 15 ms in a region) comes on top of each vend call. The extension's pool makes one vend invocation sign 8 proofs, each handed out once; a KMS key's proofs are also signed ahead on the vend side (4 per KMS miss, in parallel). KMS rows go through moto, which signs serially on the same CPU.")
	w("")
	w("| path, key | n | p50 | p99 | max | vend calls per request |")
	w("| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, d := range r.dpop {
		w("| %s | %d | %s | %s | %s | %.2f |", d.Name, d.N, us(d.P50), us(d.P99), us(d.Max), float64(d.VendCalls)/float64(max(d.Requests, 1)))
	}
}
