package main

// One refresher run's throughput (issue: concurrency sized for I/O): the
// multi-tenant shape (one provider per merchant, 10 scope sets each), every
// key due, the provider answering after a fixed latency, the run against
// DynamoDB Local on this machine, at several concurrencies. From the rate,
// the largest fleet one run per minute keeps fresh.

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

type refresherRow struct {
	Latency     time.Duration
	Parallel    int
	Due         int
	Renewed     int
	Upstream    int // token requests the provider saw during the run
	Took        time.Duration
	Budget      time.Duration
	PerSecond   float64
	BeforeDline bool
}

func refresherBench(r *report) error {
	ep, err := testenv.DynamoDBEndpoint()
	if err != nil {
		return err
	}
	providers, scopes := 200, 10
	budget := 20 * time.Second
	latencies := []time.Duration{150 * time.Millisecond, 500 * time.Millisecond, time.Second}
	pars := []int{16, 64, 128}
	if r.quick {
		providers, budget = 20, 4*time.Second
		latencies, pars = []time.Duration{500 * time.Millisecond}, []int{64}
	}
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	defs := map[string]*provider.Definition{}
	for p := range providers {
		id := fmt.Sprintf("merchant-%03d", p)
		sb.AddClient(sandbox.Client{ID: id, Secret: id + "-secret", Style: sandbox.K2, ExpiresIn: 3600})
		d := &provider.Definition{Name: id, TokenURL: srv.URL + sandbox.K2TokenPath, ClientID: id, ClientSecret: id + "-secret", AuthMethod: provider.AuthPost}
		if err := d.Validate(); err != nil {
			return err
		}
		defs[id] = d
	}
	ctx := context.Background()
	client := testenv.DynamoDBClient(ep)
	table := "bench-refresh-" + testenv.RandomSuffix()
	if err := dynamostore.CreateTable(ctx, client, table); err != nil {
		return err
	}
	st := dynamostore.New(client, table)
	up := &upstream.Client{AttemptTimeout: 5 * time.Second, MaxRetryAfter: -1}
	v := vend.New(registry.NewStatic(defs), up, st, vend.Options{DisableRefreshAhead: true, L1MaxAge: -1})
	// Fill the cache: every key once, 32 providers at a time.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	var fillErr error
	var mu sync.Mutex
	for name := range defs {
		sem <- struct{}{}
		wg.Go(func() { // one provider's keys in turn: admission is one record per provider
			defer func() { <-sem }()
			for s := range scopes {
				if _, err := v.Token(ctx, vend.Request{Provider: name, Scope: fmt.Sprint("scope-", s), MinTTL: -1}); err != nil {
					mu.Lock()
					fillErr = err
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if fillErr != nil {
		return fillErr
	}
	for _, lat := range latencies {
		sb.ClearFaults()
		sb.SetFault(sandbox.Fault{Delay: lat})
		for _, par := range pars {
			before := sb.Stats().Total
			rctx, cancel := context.WithTimeout(ctx, budget)
			start := time.Now()
			res, err := v.RefreshDue(rctx, vend.RefreshOptions{Force: true, Parallel: par})
			took := time.Since(start)
			cancel()
			if err != nil {
				return err
			}
			r.refresher = append(r.refresher, refresherRow{Latency: lat, Parallel: par, Due: res.Due, Renewed: res.Refreshed,
				Upstream: sb.Stats().Total - before, Took: took, Budget: budget, PerSecond: float64(res.Refreshed) / took.Seconds(), BeforeDline: took < budget})
		}
	}
	sb.ClearFaults()
	return nil
}

func (r *report) writeRefresher(w func(string, ...any)) {
	if len(r.refresher) == 0 {
		return
	}
	w("")
	w("## 11. One refresher run: renewals per second against concurrency")
	w("")
	w("The multi-tenant shape: one provider per merchant (%d keys, 10 scope sets per provider), every key due (a forced run), the provider answering each token request after the latency shown, the vending core's `RefreshDue` against DynamoDB Local on this 2-core machine, each run given the time budget shown as its deadline. Each provider keeps at most 4 requests in flight (`max_concurrent_fetches`). *upstream* is the token requests the provider saw during the run: one per renewal.", r.refresher[0].Due)
	w("")
	w("| provider latency | concurrency | due | renewed | upstream | took | budget | renewals/s | returned before its deadline |")
	w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, x := range r.refresher {
		w("| %s | %d | %d | %d | %d | %s | %s | %.0f | %v |", x.Latency, x.Parallel, x.Due, x.Renewed, x.Upstream, x.Took.Round(time.Millisecond), x.Budget, x.PerSecond, x.BeforeDline)
	}
	w("")
	w("The largest fleet one run a minute keeps fresh, at the default concurrency (64), from the rates above: a key with a 1-hour token is renewed about every 48 minutes (12 minutes before expiry), one with a 5-minute token every 4 minutes, so a rate of *n*/s keeps *n* × 60 × 48 and *n* × 60 × 4 keys fresh (provided each run of a minute sustains the rate; runs are given 120 s). With fan-out (the default in AWS) a run is 8 invocations, one per shard, each with its own CPU in Lambda: up to 8 times one invocation's figure, a projection from the measured rate (on this machine the 8 share 2 cores with DynamoDB Local and moto, below).")
	w("")
	w("| provider latency | renewals/s, one invocation | keys kept fresh, 1-hour tokens | 5-minute tokens | with fan-out (8 invocations), 1-hour tokens | 5-minute tokens |")
	w("| ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, x := range r.refresher {
		if x.Parallel != 64 {
			continue
		}
		w("| %s | %.0f | %.0f | %.0f | %.0f | %.0f |", x.Latency, x.PerSecond, x.PerSecond*60*48, x.PerSecond*60*4, store.Shards*x.PerSecond*60*48, store.Shards*x.PerSecond*60*4)
	}
}
