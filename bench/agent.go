package main

// Tokens for services in containers and on instances (issue 30): a cached
// read through the agent's loopback endpoint (its handler, token check and
// the extension's cache, as the sidecar runs them) against a direct call of
// the HTTP API, SigV4-signed by the Go client, for every read.

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/token-vendor/token-vendor/pkg/agent"
	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/extension"
	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

type agentResult struct {
	Agent, DirectHTTP latencyRow
}

func agentBench(r *report) error {
	ctx := context.Background()
	sb := sandbox.New()
	up := httptest.NewServer(sb.Handler())
	defer up.Close()
	defs := sandbox.DemoProviders(sb, up.URL)
	provs := registry.NewStatic(defs)
	v := vend.New(provs, vendtest.Client(nil), store.NewMemory(nil), vend.Options{DisableRefreshAhead: true})
	api := httptest.NewServer(httpapi.New(v, provs, nil, nil))
	defer api.Close()
	direct := client.NewHTTPFetcher(api.URL, credentials.NewStaticCredentialsProvider("AKIDBENCH", "bench-secret", "bench-session"), "us-east-1")
	req := client.Request{Provider: "demo-k2"}

	// The agent's cache fills through the same API here; a cached read
	// never reaches it, whichever way the agent fills.
	const tok = "bench-agent-token-0123456789"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: agent.Handler(tok, extension.New(direct, tok, nil))}
	go srv.Serve(ln)
	defer srv.Close()
	read := localRead(ctx, "agent", "http://"+ln.Addr().String()+"/v1/tokens/demo-k2", agent.Header, tok)
	n := 20000
	if r.quick {
		n = 2000
	}
	var res agentResult
	if res.Agent, err = measure("cached read through the agent (loopback HTTP, agent token)", n, read); err != nil {
		return err
	}
	if res.DirectHTTP, err = measure("direct HTTP API call (Go client, SigV4-signed, API handler on loopback, L1 hit)", n/4, func() error {
		_, err := direct.Fetch(ctx, req)
		return err
	}); err != nil {
		return err
	}
	r.agent = res
	return nil
}

func (r *report) writeAgent(w func(string, ...any)) {
	a := r.agent
	if a.Agent.N == 0 {
		return
	}
	w("")
	w("### The agent, for containers and instances")
	w("")
	w("A cached read through the agent (its handler with the agent-token check over the extension's cache, on loopback, as the sidecar serves it) against a service calling the HTTP API for every read with the Go client (SigV4 signing, the API's handler on loopback answering from L1; API Gateway adds the network round trip and its own latency, not measurable here).")
	w("")
	w("| path | n | p50 | p99 | max |")
	w("| --- | ---: | ---: | ---: | ---: |")
	for _, l := range []latencyRow{a.Agent, a.DirectHTTP} {
		w("| %s | %d | %s | %s | %s |", l.Name, l.N, us(l.P50), us(l.P99), us(l.Max))
	}
}
