package lambdart

import "time"

// FleetRun is a scheduled refresher run of the real bootstrap over a fleet
// of due keys: its shape, and what was measured. The fleet tests record it
// as a JSON line (TV_FLEET_OUT) and make bench reads it back.
type FleetRun struct {
	Providers, Scopes int
	Latency           time.Duration // the provider's, per token request
	Deadline          time.Duration // each invocation's
	Concurrency       int           // REFRESH_CONCURRENCY
	FanOut            bool          // REFRESH_FANOUT
	Instances         int           // execution environments (reserved concurrency)
	Schedules         int           // scheduled events queued at once (overlapping runs)

	Keys, Refreshed, ShardsBusy, Dispatched, Invocations int
	Upstream                                             int           // token requests the provider saw during the runs
	Took                                                 time.Duration // first event queued to last invocation done
	Slowest                                              time.Duration // the longest invocation
	Late                                                 int           // invocations that ended at or after their deadline
}

// RenewalsPerSecond is the fleet's rate over the whole run.
func (r FleetRun) RenewalsPerSecond() float64 { return float64(r.Refreshed) / r.Took.Seconds() }
