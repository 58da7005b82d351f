package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"

	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/tests/fleet"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

const envChild = "BENCH_CHILD" // "bare": the throughput run's bare server

var approaches = []string{fleet.Vendor, fleet.OAuth2, fleet.Naive}

// child is the bare server of the throughput run.
func child() int { return bareServer() }

// fleetRow is upstream requests per approach for one fleet size.
type fleetRow struct {
	Procs, Callers int
	Upstream       map[string]int
	Errors         map[string]int
}

func fleetColdStart(r *report) error {
	sizes := []int{1, 2, 4, 8, 16}
	if r.quick {
		sizes = []int{1, 2}
	}
	const callers = 50
	ddb, err := testenv.DynamoDBEndpoint()
	if err != nil {
		return err
	}
	for _, n := range sizes {
		row := fleetRow{Procs: n, Callers: callers, Upstream: map[string]int{}, Errors: map[string]int{}}
		for _, ap := range approaches {
			up, errs, err := runFleet(ap, n, callers, ddb)
			if err != nil {
				return fmt.Errorf("%s × %d: %w", ap, n, err)
			}
			row.Upstream[ap], row.Errors[ap] = up, errs
		}
		r.fleet = append(r.fleet, row)
	}
	return nil
}

// runFleet starts procs processes taking approach, has every caller ask at
// once on a cold cache, and counts the provider's requests.
func runFleet(approach string, procs, callers int, ddb string) (int, int, error) {
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	defsFile, err := fleet.WriteDefs("", sandbox.DemoProviders(sb, srv.URL))
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(defsFile)
	table := "bench-" + testenv.RandomSuffix()
	if err := dynamostore.CreateTable(context.Background(), testenv.DynamoDBClient(ddb), table); err != nil {
		return 0, 0, err
	}
	f, err := fleet.Start(procs, fleet.Options{Approach: approach, Table: table, DefsFile: defsFile})
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	rep, err := f.Round(fleet.Command{Provider: "demo-k2", Callers: callers})
	if err != nil {
		return 0, 0, err
	}
	return sb.Stats().Total, len(rep.Errors), nil
}
