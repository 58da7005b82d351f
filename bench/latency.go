package main

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

type latencyRow struct {
	Name          string
	N             int
	P50, P99, Max time.Duration
	Allocs        float64
}

func measure(name string, n int, f func() error) (latencyRow, error) {
	if err := f(); err != nil { // warm
		return latencyRow{}, err
	}
	d := make([]time.Duration, n)
	for i := range d {
		s := time.Now()
		if err := f(); err != nil {
			return latencyRow{}, err
		}
		d[i] = time.Since(s)
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	allocs := testing.AllocsPerRun(200, func() { _ = f() })
	return latencyRow{Name: name, N: n, P50: d[n/2], P99: d[n*99/100], Max: d[n-1], Allocs: allocs}, nil
}

func latency(r *report) error {
	ctx := context.Background()
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	defs := sandbox.DemoProviders(sb, srv.URL)
	provs := registry.NewStatic(defs)
	n := 100000
	if r.quick {
		n = 10000
	}
	l1 := vend.New(provs, &upstream.Client{}, store.NewMemory(nil), vend.Options{})
	req := vend.Request{Provider: "demo-dot", Scope: "read write", MinTTL: -1}
	row, err := measure("token-vendor L1 hit", n, func() error { _, err := l1.Token(ctx, req); return err })
	if err != nil {
		return err
	}
	r.latency = append(r.latency, row)

	ddb := os.Getenv(testenv.EnvDynamoDB)
	table := "lat-" + testenv.RandomSuffix()
	if err := dynamostore.CreateTable(ctx, testenv.DynamoDBClient(ddb), table); err != nil {
		return err
	}
	l2 := vend.New(provs, &upstream.Client{}, dynamostore.New(testenv.DynamoDBClient(ddb), table), vend.Options{L1MaxAge: -1})
	row, err = measure("token-vendor L2 hit (DynamoDB Local)", n/50, func() error { _, err := l2.Token(ctx, req); return err })
	if err != nil {
		return err
	}
	r.latency = append(r.latency, row)
	if err := handlerLatency(r, "direct-invoke handler, L1 hit", l1, n/10); err != nil {
		return err
	}
	if err := handlerLatency(r, "direct-invoke handler, L2 hit (DynamoDB Local)", l2, n/50); err != nil {
		return err
	}

	k2 := defs["demo-k2"]
	cc := &clientcredentials.Config{ClientID: k2.ClientID, ClientSecret: k2.ClientSecret, TokenURL: k2.TokenURL, AuthStyle: oauth2.AuthStyleInParams}
	ts := cc.TokenSource(ctx)
	row, err = measure("x/oauth2 ReuseTokenSource cached", n, func() error { _, err := ts.Token(); return err })
	if err != nil {
		return err
	}
	r.latency = append(r.latency, row)
	return nil
}

// handlerLatency times the direct-invoke handler through aws-lambda-go's
// handler path, for the cost estimate.
func handlerLatency(r *report, name string, v *vend.Vendor, n int) error {
	h := lambda.NewHandler(lambdafn.Invoke(v, nil, slog.New(slog.DiscardHandler), nil))
	ev := []byte(`{"provider":"demo-dot","scope":"read write"}`)
	row, err := measure(name, n, func() error { _, err := h.Invoke(context.Background(), ev); return err })
	if err != nil {
		return err
	}
	r.latency = append(r.latency, row)
	r.handler = append(r.handler, row)
	return nil
}
