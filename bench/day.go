package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// dayResult compares a simulated day of steady demand.
type dayResult struct {
	Hours                            int
	Instances, Period                int // instances; seconds between one instance's requests
	Vends                            int
	VendorUpstream, VendorWaited     int
	BaselineUpstream, BaselineWaited int
	RefresherRuns                    int
}

// simulatedDay runs 24 h on a fake clock: N instances each asking every
// Period seconds for a Kopo Kopo-style (3600 s) token. token-vendor runs with
// its refresher every minute on DynamoDB Local; the baseline is a per-process
// cache with x/oauth2's rule (reuse until 10 s before expiry), re-implemented
// on the fake clock because x/oauth2 reads the wall clock.
func simulatedDay(r *report) error {
	const instances = 4
	period := 30
	day := 24 * time.Hour
	if r.quick {
		day = 3 * time.Hour
	}
	ddb := os.Getenv(testenv.EnvDynamoDB)
	ctx := context.Background()
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	defs := sandbox.DemoProviders(sb, srv.URL)
	clock := vendtest.NewClock()
	table := "day-" + testenv.RandomSuffix()
	if err := dynamostore.CreateTable(ctx, testenv.DynamoDBClient(ddb), table); err != nil {
		return err
	}
	st := dynamostore.New(testenv.DynamoDBClient(ddb), table)
	provs := registry.NewStatic(defs)
	up := &upstream.Client{Now: clock.Now}
	var fleet []*vend.Vendor
	for i := 0; i < instances+1; i++ { // the last one is the refresher's instance
		fleet = append(fleet, vend.New(provs, up, st, vend.Options{Now: clock.Now, Sleep: clock.Sleep, DisableRefreshAhead: true}))
	}
	res := dayResult{Hours: int(day.Hours()), Instances: instances, Period: period}
	// Baseline state: each process's cached token expiry.
	baseExpiry := make([]time.Time, instances)
	end := clock.Now().Add(day)
	nextRefresh := clock.Now()
	for tick := 0; clock.Now().Before(end); tick++ {
		if !clock.Now().Before(nextRefresh) {
			if _, err := fleet[instances].RefreshDue(ctx, vend.RefreshOptions{Horizon: time.Minute}); err != nil {
				return err
			}
			res.RefresherRuns++
			nextRefresh = nextRefresh.Add(time.Minute)
		}
		var g errgroup.Group
		results := make([]vend.Source, instances)
		for i := 0; i < instances; i++ {
			g.Go(func() error {
				t, err := fleet[i].Token(ctx, vend.Request{Provider: "demo-k2", MinTTL: -1})
				results[i] = t.Source
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return fmt.Errorf("vend at %s: %w", clock.Now(), err)
		}
		for i, src := range results {
			res.Vends++
			if src == vend.FromUpstream {
				res.VendorWaited++
			}
			if !clock.Now().Add(10 * time.Second).Before(baseExpiry[i]) {
				tok, err := up.Fetch(ctx, defs["demo-k2"], provider.Key{})
				if err != nil {
					return err
				}
				baseExpiry[i] = tok.Expiry
				res.BaselineUpstream++
				res.BaselineWaited++
			}
		}
		clock.Advance(time.Duration(period) * time.Second)
	}
	res.VendorUpstream = sb.Stats().Total - res.BaselineUpstream
	r.day = res
	return nil
}
