package main

// Tokens for consumer Lambdas (issue 15): a cached read through the
// extension's loopback endpoint against a direct invoke of the vend
// function through the AWS SDK, and what a million consumer reads cost
// each way.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"

	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/extension"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

type extensionResult struct {
	Extension, DirectInvoke latencyRow
	// USD per million consumer token reads
	CostWith, CostWithout float64
}

// Assumptions of the cost comparison, besides the measured latencies.
const (
	invokeRTTms       = 15.0 // a Lambda Invoke round trip inside a region, which the consumer waits for
	consumerMemoryGB  = 0.5
	readsPerTokenLife = 1000.0 // consumer reads per token lifetime per environment (vend invocations with the extension)
)

func extensionBench(r *report) error {
	ctx := context.Background()
	sb := sandbox.New()
	up := httptest.NewServer(sb.Handler())
	defer up.Close()
	defs := sandbox.DemoProviders(sb, up.URL)
	v := vend.New(registry.NewStatic(defs), vendtest.Client(nil), store.NewMemory(nil), vend.Options{DisableRefreshAhead: true})
	h := lambda.NewHandler(lambdafn.Invoke(v, nil, slog.New(slog.DiscardHandler), nil))
	// The Lambda Invoke API, on loopback, running the vend handler.
	invoke := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		out, err := h.Invoke(req.Context(), body)
		if err != nil {
			w.Header().Set("X-Amz-Function-Error", "Unhandled")
		}
		w.Write(out)
	}))
	defer invoke.Close()
	api := awslambda.NewFromConfig(testenv.Config(), func(o *awslambda.Options) { o.BaseEndpoint = aws.String(invoke.URL) })
	direct := client.NewLambdaInvoker(api, "token-vendor-VendFunction")
	req := client.Request{Provider: "demo-k2"}

	cache := extension.New(direct, "session", nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: cache.Handler()}
	go srv.Serve(ln)
	defer srv.Close()
	read := localRead(ctx, "extension", "http://"+ln.Addr().String()+"/v1/tokens/demo-k2", extension.Header, "session")
	n := 20000
	if r.quick {
		n = 2000
	}
	var res extensionResult
	if res.Extension, err = measure("cached read through the extension (loopback HTTP)", n, read); err != nil {
		return err
	}
	if res.DirectInvoke, err = measure("direct invoke of the vend function (AWS SDK → Invoke API on loopback → handler, L1 hit)", n/4, func() error {
		_, err := direct.Fetch(ctx, req)
		return err
	}); err != nil {
		return err
	}
	// Without the extension every read is an invocation of the vend
	// function, which the consumer waits for; with it, one invocation per
	// token lifetime per environment, and a sub-millisecond local read.
	vendBilled := math.Ceil(float64(r.handlerP50()) / 1e6)
	invocation := lambdaPerMillionReq + vendBilled/1000*memoryGB*lambdaPerGBs*1e6
	consumerWait := func(ms float64) float64 { return ms / 1000 * consumerMemoryGB * lambdaPerGBs * 1e6 }
	res.CostWithout = invocation + consumerWait(invokeRTTms+vendBilled)
	res.CostWith = invocation/readsPerTokenLife + consumerWait(float64(res.Extension.P50)/1e6)
	r.ext = res
	return nil
}

func (r *report) handlerP50() int64 {
	for _, h := range r.handler {
		return int64(h.P50)
	}
	return 1e6 // 1 ms when the handler latency was not measured in this run
}

func (r *report) writeExtension(w func(string, ...any)) {
	e := r.ext
	if e.Extension.N == 0 {
		return
	}
	w("")
	w("## 8. Tokens for consumer Lambdas: the extension")
	w("")
	w("The extension's cached read (its HTTP handler on loopback, the same code the layer runs) against a consumer invoking the vend function directly through the AWS SDK (the SDK's signing and HTTP, an Invoke API on loopback running the vend handler; AWS adds the network round trip, typically 10–30 ms, not measurable here).")
	w("")
	w("| path | n | p50 | p99 | max |")
	w("| --- | ---: | ---: | ---: | ---: |")
	for _, l := range []latencyRow{e.Extension, e.DirectInvoke} {
		w("| %s | %d | %s | %s | %s |", l.Name, l.N, us(l.P50), us(l.P99), us(l.Max))
	}
	w("")
	w("Cost per million consumer token reads at list prices (us-east-1; Lambda arm64 $%.10f per GB-s, $%.2f per million requests). Without the extension each read is a vend invocation (256 MB, billed the measured handler p50 rounded up) and the consumer (%.1f GB) waits the Invoke round trip (assumed %.0f ms) plus the handler; with it, one vend invocation per %.0f reads (a token's lifetime in one environment) and the consumer waits the extension's p50.", lambdaPerGBs, lambdaPerMillionReq, consumerMemoryGB, invokeRTTms, readsPerTokenLife)
	w("")
	w("| | USD per million reads |")
	w("| --- | ---: |")
	w("| direct invoke of the vend function | %.3f |", e.CostWithout)
	w("| through the extension | %.4f |", e.CostWith)
}

// localRead is one consumer read of a token from a local token server (the
// extension or the agent) on loopback: a GET carrying the server's key
// header, the body drained so the connection is reused.
func localRead(ctx context.Context, server, url, header, key string) func() error {
	hc := &http.Client{}
	return func() error {
		rq, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		rq.Header.Set(header, key)
		resp, err := hc.Do(rq)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s answered %d", server, resp.StatusCode)
		}
		return nil
	}
}
