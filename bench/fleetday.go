package main

// A simulated day at fleet sizes no machine here can renew for real
// (100 000 and 1 000 000 keys in use): a fake clock in seconds, every key
// used every 5 minutes by a caller who wants 60 s of life left, 1-hour
// tokens renewed 12 minutes before expiry (the vendor's rule for them), and
// a scheduled run every minute that renews, per refresh-index shard, the
// keys due before the next run in refresh_at order, at most what one
// invocation renews in a minute at the rate measured for the real
// bootstrap in this run. Without fan-out one invocation renews every shard;
// with it, each of the 8 shards has its own invocation. A caller whose key
// has less than 60 s left waits on the provider and the token it fetches is
// cached for everyone.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/tests/lambdart"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

type fleetDayRow struct {
	Keys          int
	FanOut        bool
	Rate          float64 // renewals/s one invocation sustains (measured)
	PerMinute     int     // renewals the scheduled runs can make per minute
	Renewals      int     // by the refresher
	WarmupWaits   int     // callers who waited in the first hour (cold keys)
	Waits         int     // callers who waited after the first hour
	Uses          int     // caller requests after the first hour
	MaxLagSeconds int     // the oldest due key past its refresh_at, at a run's start, after the first hour
}

const (
	dayTokenLife  = 3600
	dayRenewAhead = 720 // max(60 s, life/5)
	dayMinTTL     = 60
	dayUseEvery   = 300
	dayInterval   = 60
	dayLength     = 25 * 3600 // the warm-up hour, then a day
)

// simulateFleetDay runs one day for n keys.
func simulateFleetDay(n int, rate float64, fanOut bool, seed uint64) fleetDayRow {
	rng := rand.New(rand.NewPCG(seed, 1))
	shards := 1
	if fanOut {
		shards = store.Shards
	}
	perRun := int(rate * dayInterval) // one invocation's renewals in one interval
	row := fleetDayRow{Keys: n, FanOut: fanOut, Rate: rate, PerMinute: perRun * shards}
	first := make([]int32, n)   // the key's first use (cold)
	expiry := make([]int32, n)  // 0: no token yet
	refresh := make([]int32, n) // the cached token's refresh_at
	shard := make([]uint8, n)
	byPhase := make([][]int32, dayUseEvery/dayInterval) // keys by the minute of their 5-minute cycle
	for k := range n {
		first[k] = int32(rng.IntN(3600))
		shard[k] = uint8(k % shards)
		g := (int(first[k]) % dayUseEvery) / dayInterval
		byPhase[g] = append(byPhase[g], int32(k))
	}
	// The refresh index, per shard: keys bucketed by the minute of their
	// refresh_at; a bucket entry is stale once the key's refresh_at moved.
	minutes := dayLength/dayInterval + 2*dayTokenLife/dayInterval
	index := make([][][]int32, shards)
	oldest := make([]int, shards)
	for s := range index {
		index[s] = make([][]int32, minutes)
	}
	put := func(k int, at int32) {
		refresh[k] = at
		m := int(at) / dayInterval
		index[shard[k]][m] = append(index[shard[k]][m], int32(k))
	}
	issue := func(k int, now int32) {
		expiry[k] = now + dayTokenLife
		put(k, expiry[k]-dayRenewAhead)
	}
	for m := 0; m < dayLength/dayInterval; m++ {
		now := int32(m * dayInterval)
		warm := now >= 3600
		// The scheduled run at the top of the minute: keys due before the next.
		for s := range shards {
			budget := perRun
			for b := oldest[s]; b <= m && budget > 0; b++ {
				bucket := index[s][b]
				i := 0
				for ; i < len(bucket) && budget > 0; i++ {
					k := bucket[i]
					if int(refresh[k])/dayInterval != b {
						continue // renewed by a caller since; its new entry is elsewhere
					}
					if lag := int(now - refresh[k]); warm && lag > row.MaxLagSeconds {
						row.MaxLagSeconds = lag
					}
					issue(int(k), now)
					budget--
					row.Renewals++
				}
				index[s][b] = bucket[i:]
			}
			for oldest[s] <= m && len(index[s][oldest[s]]) == 0 {
				index[s][oldest[s]] = nil
				oldest[s]++
			}
		}
		// The callers of this minute, each at its own second.
		for _, k := range byPhase[m%len(byPhase)] {
			at := now + first[k]%dayInterval
			if at < first[k] {
				continue // not in use yet
			}
			if warm {
				row.Uses++
			}
			if expiry[k] == 0 || expiry[k]-at < dayMinTTL {
				if warm {
					row.Waits++
				} else {
					row.WarmupWaits++
				}
				issue(int(k), at)
			}
		}
	}
	return row
}

// fleetDayBench simulates the day at 100 000 and 1 000 000 keys, with and
// without fan-out, at the rate one invocation of the real bootstrap
// sustained in this run (500 ms provider latency).
func fleetDayBench(r *report) error {
	rate := 0.0
	for _, f := range r.fleetRuns {
		if !f.FanOut {
			rate = f.RenewalsPerSecond()
		}
	}
	if rate == 0 {
		rate = 40 // the issue's floor, should the run have measured nothing
	}
	sizes := []int{100_000, 1_000_000}
	if r.quick {
		sizes = []int{10_000, 100_000}
	}
	start := time.Now()
	for _, n := range sizes {
		for _, fan := range []bool{false, true} {
			r.fleetDay = append(r.fleetDay, simulateFleetDay(n, rate, fan, uint64(n)))
		}
	}
	r.fleetDayTook = time.Since(start)
	return nil
}

// fleetRunBench runs the scheduled runs of the real refresher bootstrap
// (tests/lambdart: the Runtime API harness, the template's environment,
// DynamoDB Local and moto KMS, Lambda's asynchronous engine stood in for)
// at full size, and reads what they measured.
func fleetRunBench(r *report) error {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	out := filepath.Join(os.TempDir(), "tv-fleet-"+testenv.RandomSuffix()+".jsonl")
	defer os.Remove(out)
	cmd := exec.Command("go", "test", "-count=1", "-timeout=20m", "-run", "^(TestRefresherBootstrapRenewsEveryKeyOnce|TestRefresherFanOutRenewsEachKeyOnce)$", "./tests/lambdart/")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "TV_FLEET_OUT="+out)
	if !r.quick {
		cmd.Env = append(cmd.Env, "TV_FLEET_SIZE=full")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("fleet runs: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(b)) {
		var f lambdart.FleetRun
		if err := json.Unmarshal([]byte(line), &f); err != nil {
			return err
		}
		r.fleetRuns = append(r.fleetRuns, f)
	}
	if len(r.fleetRuns) != 2 {
		return fmt.Errorf("fleet runs recorded %d results, want 2", len(r.fleetRuns))
	}
	return nil
}

func (r *report) writeFleet(w func(string, ...any)) {
	if len(r.fleetRuns) > 0 {
		w("")
		w("### Scheduled runs of the real refresher bootstrap")
		w("")
		w("The refresher's bootstrap under the Runtime API harness with the template's environment, DynamoDB Local and moto KMS (every renewal seals its token with a data key from moto). The due keys are put in the table as the vend path leaves them (50 minutes into 1-hour tokens, past `refresh_at`), one provider per merchant with 10 scope sets, the provider answering each token request after the latency shown. The scheduled event (`events/schedule.json`) is queued on a stand-in for Lambda's asynchronous engine (`tests/lambdart/async.go`) the number of times shown, at once, as overlapping schedules: with fan-out each dispatch queues one invocation per shard on the same engine, run by the execution environments shown (reserved concurrency). *upstream*: token requests the provider saw; each key exactly once is asserted.")
		w("")
		w("| keys | providers | latency | fan-out | environments | schedules | deadline each | invocations | shard runs that found the shard busy | renewed | upstream | slowest invocation | all done in | renewals/s | late invocations |")
		w("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		for _, f := range r.fleetRuns {
			w("| %d | %d | %s | %v | %d | %d | %s | %d | %d | %d | %d | %s | %s | %.0f | %d |", f.Keys, f.Providers, f.Latency, f.FanOut, f.Instances, f.Schedules,
				f.Deadline, f.Invocations, f.ShardsBusy, f.Refreshed, f.Upstream, f.Slowest.Round(time.Millisecond), f.Took.Round(time.Millisecond), f.RenewalsPerSecond(), f.Late)
		}
		w("")
		w("Here every environment shares this machine's 2 cores with DynamoDB Local and moto; in Lambda each shard's invocation has its own, so fan-out multiplies what one invocation renews by up to the 8 shards. The fan-out row's due set is more than one invocation could renew before its deadline (%d renewals in flight at %s: at most about %.0f in %s).",
			r.fleetRuns[len(r.fleetRuns)-1].Concurrency, r.fleetRuns[len(r.fleetRuns)-1].Latency,
			float64(r.fleetRuns[len(r.fleetRuns)-1].Concurrency)/r.fleetRuns[len(r.fleetRuns)-1].Latency.Seconds()*r.fleetRuns[len(r.fleetRuns)-1].Deadline.Seconds(), r.fleetRuns[len(r.fleetRuns)-1].Deadline)
	}
	if len(r.fleetDay) > 0 {
		w("")
		w("### A simulated day at 100 000 and 1 000 000 keys (fake clock)")
		w("")
		w("No machine here renews a million keys for real, so this day is a model on a fake clock (`bench/fleetday.go`, %s for all rows): every key used every 5 minutes by a caller wanting 60 s of life, 1-hour tokens renewed 12 minutes before expiry, keys first used at random in the first hour (the warm-up, when every first caller waits), then 24 hours. A scheduled run every minute renews, per shard, the keys due before the next run in `refresh_at` order, at most what one invocation renews in a minute at **%.0f/s**, the rate one invocation of the real bootstrap sustained above at 500 ms. Without fan-out one invocation renews every shard; with it each of the 8 shards has its own.", r.fleetDayTook.Round(time.Millisecond), r.fleetDay[0].Rate)
		w("")
		w("| keys in use | fan-out | renewals the runs can make per minute | renewals in the day | callers who waited in the warm-up | caller requests after it | callers who waited after it | worst lag past refresh_at |")
		w("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
		for _, d := range r.fleetDay {
			w("| %d | %v | %d | %d | %d | %d | %d | %s |", d.Keys, d.FanOut, d.PerMinute, d.Renewals, d.WarmupWaits, d.Uses, d.Waits, time.Duration(d.MaxLagSeconds)*time.Second)
		}
	}
}
