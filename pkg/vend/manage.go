package vend

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
)

// RevokeResult says what Revoke managed.
type RevokeResult struct {
	// RevokedUpstream is true when the provider confirmed the revocation.
	RevokedUpstream bool
	// Purged is true when a cached token was removed.
	Purged bool
}

// Revoke revokes the cached token at the provider where it has a
// revoke_url (RFC 7009) and purges it from the cache either way. The purge is
// a versioned write, not a delete: the record keeps counting versions, so a
// lease taken before the revocation can never store a token over one taken
// after it, and a lease held during it is voided.
func (v *Vendor) Revoke(ctx context.Context, req Request) (RevokeResult, error) {
	def, err := v.providers.Get(ctx, req.Provider)
	if err != nil {
		return RevokeResult{}, err
	}
	key, err := resolve(def, req)
	if err != nil {
		return RevokeResult{}, err
	}
	j := &job{def: def, key: key}
	var res RevokeResult
	var tok string // the live token to revoke at the provider, once purged
	for attempt := 0; ; attempt++ {
		it, err := v.store.Get(ctx, key.PK, true)
		if err != nil {
			return res, fmt.Errorf("read cached token: %w", err)
		}
		v.l1.purgePK(key.PK)
		if it == nil {
			break
		}
		now := v.opts.Now()
		// One revoke per key per interval, fleet-wide: the purge below
		// claims the interval before the provider is called, so a flood of
		// revokes (concurrent or not) makes one upstream revocation.
		if next := time.UnixMilli(it.RevokedAtMS).Add(v.opts.RejectInterval); it.RevokedAtMS > 0 && now.Before(next) {
			return res, &UnavailableError{Provider: def.Name, RetryAfter: next.Sub(now).Round(time.Second) + time.Second,
				Reason: "revoking this key is limited to once per " + v.opts.RejectInterval.String()}
		}
		tok = ""
		live := !it.Token.IsZero() && now.Before(it.Expiry())
		if live && def.RevokeURL != "" {
			if t, oerr := v.open(ctx, j, it); oerr != nil {
				v.log.ErrorContext(ctx, "cannot open cached token to revoke it", "provider", def.Name, "error", oerr)
			} else {
				tok = t
			}
		}
		next := *it
		next.Version = nextVersion(it.Version, now)
		next.LeaseOwner, next.LeaseUntilMS = "", 0
		next.RevokedAtMS = now.UnixMilli()
		dropToken(&next, now) // the tombstone outlives any lease by far
		next.WriteID = randomID()
		err = v.cas(ctx, &next, it.Version)
		if err == nil {
			res.Purged = res.Purged || !it.Token.IsZero()
			break
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= 4 {
			return res, fmt.Errorf("purge cached token: %w", err)
		}
	}
	if tok != "" {
		// Purged first: nobody is handed the token while it is revoked.
		if rerr := v.fetcher.Revoke(ctx, def, tok); rerr != nil {
			v.log.WarnContext(ctx, "provider did not confirm revocation; the cached token is purged anyway", "provider", def.Name, "error", rerr)
		} else {
			res.RevokedUpstream = true
		}
	}
	v.l1.purgePK(key.PK) // again: a concurrent vend may have re-filled it
	v.obs.Event(def.Name, "revoked")
	return res, nil
}

// RefreshOptions tune one refresher run.
type RefreshOptions struct {
	// Horizon: renew keys whose refresh_at falls before now + Horizon (the
	// time to the next run).
	Horizon time.Duration
	// Providers limits the run; empty means all.
	Providers []string
	// Force renews every selected key now, due or not.
	Force bool
	// Parallel bounds concurrent renewals in the run (DefaultRefreshParallel).
	// Renewals are I/O: a goroutine waiting on a provider costs almost nothing.
	Parallel int
	// Shards limits the run to these refresh-index shards (nil: all): one
	// invocation of a fanned-out run renews one shard.
	Shards []int
	// Exclusive makes the run take each shard's lease first and leave the
	// shards another run holds: scheduled runs that overlap never renew one
	// shard at once.
	Exclusive bool
	// Reserve, when set, is how long before the context's deadline the run
	// stops taking keys. Unset, the run measures: it stops when less than
	// its slowest renewal so far is left.
	Reserve time.Duration
}

// DefaultRefreshParallel is the run's default concurrency: with a provider
// answering in 500 ms, 64 renewals in flight are about 128 a second.
const DefaultRefreshParallel = 64

// DefaultProviderFetches is how many fetches of one provider a run keeps in
// flight unless its definition says (max_concurrent_fetches): polite to a
// real authorization server, and a hung provider holds at most this many
// of the run's slots.
const DefaultProviderFetches = 4

// settleMargin is how long before its deadline a run stops its in-flight
// renewals, so it returns (and its leases are released) in time.
const settleMargin = 500 * time.Millisecond

// hardMargin is how long before its deadline a run abandons the writes
// still settling its renewals (their leases lapse instead), so that it
// returns in time even when the store is slow.
const hardMargin = 150 * time.Millisecond

// RefreshResult is what a run did.
type RefreshResult struct {
	// Due is how many keys were due when the run started.
	Due       int `json:"due"`
	Refreshed int `json:"refreshed"`
	Failed    int `json:"failed"`
	Skipped   int `json:"skipped"`
	// Deferred keys were due but left for the next run: the run's time was
	// up, or their provider failed earlier in the run.
	Deferred int `json:"deferred"`
	// Retired keys were due but idle (not vended for IDLE_AFTER): no longer
	// renewed, they expire by TTL unless a caller wants them again.
	Retired int `json:"retired"`
	// LagSeconds is how far past its refresh_at the oldest due key was when
	// the run started (0 when none was late): the refresher's backlog.
	LagSeconds int64 `json:"lag_seconds"`
	// ShardsBusy is how many of the run's shards another run held: their
	// keys are that run's to renew.
	ShardsBusy int `json:"shards_busy,omitempty"`
	// Dispatched is how many shard invocations a fan-out run started.
	Dispatched int `json:"dispatched,omitempty"`
}

// RefreshDue renews every key due before the next run (or, with Force, every
// key), each under the fleet-wide lease. Keys go in refresh_at order; keys
// already expired and not used for a usage interval go last, since nobody
// may need them. Each provider has at most its max_concurrent_fetches in
// flight (and its fetch_rate), the run at most Parallel; a provider that
// fails as unavailable is not asked again in the run. The run stops taking
// keys when less than its slowest renewal is left, and stops the renewals in
// flight settleMargin before its deadline, so it returns in time.
func (v *Vendor) RefreshDue(ctx context.Context, o RefreshOptions) (RefreshResult, error) {
	now := v.opts.Now()
	before := now.Add(o.Horizon + v.opts.RefreshJitter)
	if o.Force {
		before = now.AddDate(100, 0, 0) // every key in the index
	}
	var res RefreshResult
	if dl, ok := ctx.Deadline(); ok {
		ctx = withHardDeadline(ctx, dl.Add(-hardMargin))
	}
	shards := o.Shards
	if o.Exclusive {
		if shards == nil {
			shards = store.AllShards()
		}
		held, busy, release, err := v.takeShards(ctx, shards)
		if err != nil {
			return RefreshResult{}, fmt.Errorf("take refresh shards: %w", err)
		}
		defer func() {
			// Within the run's deadline; a lease not given back lapses at it.
			sctx, cancel := settleContext(ctx)
			defer cancel()
			release(sctx)
		}()
		res.ShardsBusy, shards = busy, held
		if len(held) == 0 {
			return res, nil
		}
	}
	// The index lists what is due, and nothing else: a run reads O(keys
	// due), not O(table). It may lag the table; each key is confirmed by a
	// consistent read under the lease before anything is written.
	items, err := v.store.Due(ctx, before, shards)
	if err != nil {
		return RefreshResult{}, fmt.Errorf("list due tokens: %w", err)
	}
	par := cmp.Or(o.Parallel, v.opts.RefreshParallel, DefaultRefreshParallel)
	var due []*store.Item
	for _, it := range items {
		before := now.Add(o.Horizon + jitter(it.PK, v.opts.RefreshJitter))
		if (len(o.Providers) > 0 && !slices.Contains(o.Providers, it.Provider)) || (!o.Force && it.RefreshAt >= before.Unix()) {
			continue // not asked for, or not due yet even with its jitter
		}
		due = append(due, it)
		if lag := now.Unix() - it.RefreshAt; lag > res.LagSeconds {
			res.LagSeconds = lag
		}
	}
	res.Due = len(due)
	v.obs.Value("", "RefreshDue", "Count", float64(res.Due))
	v.obs.Value("", "RefreshLag", "Seconds", float64(res.LagSeconds))
	sort.SliceStable(due, func(a, b int) bool {
		if la, lb := v.lastInLine(due[a], now), v.lastInLine(due[b], now); la != lb {
			return lb
		}
		return due[a].RefreshAt < due[b].RefreshAt
	})

	// Renewals run on a context that ends settleMargin before the run's
	// deadline: a renewal cut short releases its lease or lets it lapse
	// (fetchUnderLease writes nothing half), and the run returns in time.
	rctx, cancel := ctx, context.CancelFunc(func() {})
	if dl, ok := ctx.Deadline(); ok {
		rctx, cancel = context.WithDeadline(ctx, dl.Add(-settleMargin))
	}
	defer cancel()
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		global  = make(chan struct{}, par)
		slowest time.Duration // the run's worst renewal so far
	)
	count := func(p *int) { mu.Lock(); *p++; mu.Unlock() }
	timeUp := func() bool {
		dl, ok := rctx.Deadline()
		if rctx.Err() != nil {
			return true
		}
		if !ok {
			return false
		}
		reserve := o.Reserve
		if reserve <= 0 {
			mu.Lock()
			reserve = slowest // nothing measured yet: the first renewals go
			mu.Unlock()
		}
		return time.Until(dl) < reserve
	}
	// One queue per provider, in the run's order; each provider's workers
	// (its max_concurrent_fetches) take from it, and take one of the run's
	// slots per renewal. A hung provider holds at most its own workers' slots.
	var order []string
	queues := map[string][]*store.Item{}
	for _, it := range due {
		if _, ok := queues[it.Provider]; !ok {
			order = append(order, it.Provider)
		}
		queues[it.Provider] = append(queues[it.Provider], it)
	}
	// A run over some of the shards (one invocation of a fanned-out run)
	// takes that share of each provider's cap and rate: keys spread evenly
	// over shards, so the runs together stay near the provider's figures.
	share := 1.0
	if shards != nil {
		share = float64(len(shards)) / store.Shards
	}
	for _, prov := range order {
		keys := queues[prov]
		l := v.newLane(ctx, prov, par, share)
		var next atomic.Int64
		for range min(l.workers, len(keys)) {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= len(keys) {
						return
					}
					if l.down.Load() || timeUp() || (l.limit != nil && l.limit.Wait(rctx) != nil) || !acquire(rctx, global) {
						count(&res.Deferred)
						continue
					}
					start := time.Now()
					outcome := v.renew(rctx, keys[i], now, o, &res, count)
					<-global
					took := time.Since(start)
					mu.Lock()
					slowest = max(slowest, took)
					mu.Unlock()
					if outcome == renewUnavailable && !l.down.Swap(true) {
						v.log.WarnContext(ctx, "refresh: provider unavailable; its other keys wait for the next run", "provider", prov)
					}
				}
			})
		}
	}
	wg.Wait()
	v.obs.Value("", "RefreshDeferred", "Count", float64(res.Deferred))
	if res.Deferred > 0 {
		v.log.WarnContext(ctx, "refresh run left keys for the next run", "deferred", res.Deferred, "due", res.Due, "lag_s", res.LagSeconds)
	}
	return res, nil
}

// lane is one provider's share of a run.
type lane struct {
	workers int           // max_concurrent_fetches, within half the run's slots
	limit   *rate.Limiter // fetch_rate, when the definition sets one
	down    atomic.Bool
}

func (v *Vendor) newLane(ctx context.Context, name string, par int, share float64) *lane {
	n := DefaultProviderFetches
	var limit *rate.Limiter
	if def, err := v.providers.Get(ctx, name); err == nil {
		if def.MaxConcurrentFetches > 0 {
			n = def.MaxConcurrentFetches
		}
		if def.FetchRate > 0 {
			limit = rate.NewLimiter(rate.Limit(def.FetchRate*share), 1)
		}
	}
	n = int(math.Ceil(float64(n) * share))
	return &lane{workers: max(1, min(n, par/2)), limit: limit}
}

func acquire(ctx context.Context, sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// lastInLine: a key already expired and not vended for a usage interval is
// renewed after every other, since nobody may need it.
func (v *Vendor) lastInLine(it *store.Item, now time.Time) bool {
	return !now.Before(it.Expiry()) && now.Sub(time.Unix(it.LastUsedAt, 0)) >= usageInterval(it, v.opts.IdleAfter)
}

type renewOutcome int

const (
	renewDone renewOutcome = iota
	renewUnavailable
)

// renew is one key of a refresher run.
func (v *Vendor) renew(ctx context.Context, it *store.Item, now time.Time, o RefreshOptions, res *RefreshResult, count func(*int)) renewOutcome {
	def, err := v.providers.Get(ctx, it.Provider)
	if errors.Is(err, provider.ErrNotFound) {
		count(&res.Skipped) // provider removed: let the token expire
		return renewDone
	}
	if err != nil {
		v.log.WarnContext(ctx, "refresh: cannot read provider", "provider", it.Provider, "error", err)
		count(&res.Failed)
		v.obs.Event(it.Provider, "refresh_failed")
		return renewDone
	}
	scopes, _ := provider.NormalizeScope(it.Scope)
	key := def.KeyFor(scopes)
	if key.PK != it.PK {
		// A key with a target (resource, audience), which the index does
		// not project: read it from the record.
		if rec, err := v.store.Get(ctx, it.PK, true); err == nil && rec != nil && (rec.Resource != "" || rec.Audience != "") {
			key = def.KeyForTarget(scopes, provider.Target{Resources: strings.Fields(rec.Resource), Audiences: strings.Fields(rec.Audience)})
		}
	}
	if key.PK != it.PK {
		count(&res.Skipped) // an old registration's token: let it expire
		return renewDone
	}
	before := now.Add(o.Horizon + jitter(it.PK, v.opts.RefreshJitter))
	// Run in this goroutine, not detached (shared): when the run's context
	// ends, the renewal settles (lease released or failure recorded) before
	// renew returns, so the run returns with nothing half-done.
	_, err = v.run(ctx, &job{def: def, key: key, mode: modeScheduled, before: before, force: o.Force})
	switch {
	case err == nil:
		count(&res.Refreshed)
		v.obs.Event(def.Name, "refreshed")
		v.obs.Value(def.Name, "RefreshLifeLeft", "Seconds", time.Unix(it.ExpiresAt, 0).Sub(now).Seconds())
	case errors.Is(err, errSkipped):
		count(&res.Skipped)
	case errors.Is(err, errRetired):
		count(&res.Retired)
		v.obs.Event(def.Name, "retired")
	case errors.Is(err, errRunCut) || ctx.Err() != nil:
		count(&res.Deferred) // the run's time was up: cleanly abandoned, the next run takes it
		return renewUnavailable
	default:
		v.log.WarnContext(ctx, "refresh failed", "provider", def.Name, "scope", it.Scope, "error", err)
		count(&res.Failed)
		v.obs.Event(def.Name, "refresh_failed")
		if _, ok := IsUnavailable(err); ok {
			return renewUnavailable
		}
	}
	return renewDone
}

// KeyInfo describes one cached key without its token.
type KeyInfo struct {
	Scope     string    `json:"scope"`
	ExpiresAt time.Time `json:"expires_at"`
	RefreshAt time.Time `json:"refresh_at"`
	LastError string    `json:"last_error"`
}

// MaxKeysPage bounds how many records one listing page looks at.
const MaxKeysPage = 1000

// Keys lists live cached keys per provider, never a token, one bounded
// page at a time: it looks at up to limit records after the cursor after,
// and returns the cursor to continue from ("" when the listing is done).
func (v *Vendor) Keys(ctx context.Context, providers []string, after string, limit int) (map[string][]KeyInfo, string, error) {
	if limit <= 0 || limit > MaxKeysPage {
		limit = MaxKeysPage
	}
	items, next, err := v.store.ScanPage(ctx, store.Filter{Prefix: "token#", Providers: providers}, after, limit)
	if err != nil {
		return nil, "", fmt.Errorf("list cached tokens: %w", err)
	}
	now := v.opts.Now()
	out := map[string][]KeyInfo{}
	for _, it := range items {
		live := !it.Token.IsZero() && now.Before(it.Expiry())
		if !live && it.LastError == "" {
			continue
		}
		ki := KeyInfo{Scope: it.Scope, LastError: it.LastError}
		if live {
			ki.ExpiresAt = it.Expiry().UTC()
			ki.RefreshAt = time.Unix(it.RefreshAt, 0).UTC()
		}
		out[it.Provider] = append(out[it.Provider], ki)
	}
	return out, next, nil
}

// IsUnavailable reports whether err means "try again later".
func IsUnavailable(err error) (*UnavailableError, bool) {
	var ue *UnavailableError
	if errors.As(err, &ue) {
		return ue, true
	}
	if re, ok := upstream.AsRetrieveError(err); ok && re.Kind != upstream.Permanent {
		return &UnavailableError{Provider: re.Provider, RetryAfter: max(re.RetryAfter, time.Second), Err: err}, true
	}
	return nil, false
}
