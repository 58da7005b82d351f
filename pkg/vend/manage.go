package vend

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	// Retired keys left the refresh index: due but idle (not vended for
	// IDLE_AFTER), or never renewable (their provider removed or its
	// registration changed; these are not counted in Due). They expire by
	// TTL unless a caller wants them again.
	Retired int `json:"retired"`
	// LagSeconds is how far past its refresh_at the oldest due key was when
	// the run started (0 when none was late): the refresher's backlog.
	LagSeconds int64 `json:"lag_seconds"`
	// ShardsBusy is how many of the run's shards another run held: their
	// keys are that run's to renew.
	ShardsBusy int `json:"shards_busy,omitempty"`
	// Dispatched is how many shard invocations a fan-out run started.
	Dispatched int `json:"dispatched,omitempty"`
	// Moved is how many keys the run found indexed under another shard
	// than their provider's (written before an upgrade) and moved there:
	// the provider's own run renews them.
	Moved int `json:"moved,omitempty"`
}

// RefreshDue renews every key due before the next run (or, with Force, every
// key), each under the fleet-wide lease. Keys go in refresh_at order; keys
// already expired and not used for a usage interval go last, since nobody
// may need them. Each provider has at most its max_concurrent_fetches in
// flight (and its fetch_rate, kept across runs in the table), the run at
// most Parallel; a provider that fails as unavailable is not asked again in
// the run. A run renews only the keys of the providers whose shard it
// covers (store.ShardOf), so with shard leases one run at a time renews a
// provider. Keys that can never be renewed (provider removed, registration
// changed) are retired, not counted as due. The run stops taking keys when
// less than its slowest renewal is left, and stops the renewals in flight
// settleMargin before its deadline, so it returns in time.
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
	if shards == nil && len(o.Providers) > 0 {
		shards = shardsOf(o.Providers) // an operator's run: only its providers' shards
	}
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
	// Renewals (and the definition reads before them) run on a context that
	// ends settleMargin before the run's deadline: a renewal cut short
	// releases its lease or lets it lapse (fetchUnderLease writes nothing
	// half), and the run returns in time.
	rctx, cancel := ctx, context.CancelFunc(func() {})
	if dl, ok := ctx.Deadline(); ok {
		rctx, cancel = context.WithDeadline(ctx, dl.Add(-settleMargin))
	}
	defer cancel()
	par := cmp.Or(o.Parallel, v.opts.RefreshParallel, DefaultRefreshParallel)
	var candidates, misplaced []*store.Item
	for _, it := range items {
		before := now.Add(o.Horizon + jitter(it.PK, v.opts.RefreshJitter))
		if (len(o.Providers) > 0 && !slices.Contains(o.Providers, it.Provider)) || (!o.Force && it.RefreshAt >= before.Unix()) {
			continue // not asked for, or not due yet even with its jitter
		}
		if shards != nil && !slices.Contains(shards, store.ShardOf(it.Provider)) {
			// Indexed under another shard than its provider's (written
			// before providers had a shard of their own): the run that owns
			// the provider renews it once it is moved there.
			misplaced = append(misplaced, it)
			continue
		}
		candidates = append(candidates, it)
	}
	defs := v.readDefinitions(rctx, candidates, false)
	// A key of another registration than its provider's definition, or of
	// a provider not found, is never renewable, unless the definition read
	// was a stale cached one (a definition, or a "no such provider", kept
	// for the cache's TTL): those providers are read again, past the
	// cache, before their keys are retired.
	var stale []*store.Item
	for _, it := range candidates {
		if d := defs[it.Provider]; (d.err == nil && it.Fingerprint != "" && it.Fingerprint != d.def.Fingerprint()) || errors.Is(d.err, provider.ErrNotFound) {
			stale = append(stale, it)
		}
	}
	maps.Copy(defs, v.readDefinitions(rctx, stale, true))
	unmade := v.unmadeKeys(rctx, candidates, defs)
	var due, orphans []*store.Item
	cut := 0
	for _, it := range candidates {
		d := defs[it.Provider]
		switch {
		case d.err == nil && it.Fingerprint != "" && it.Fingerprint != d.def.Fingerprint(),
			errors.Is(d.err, provider.ErrNotFound), unmade[it.PK]:
			orphans = append(orphans, it) // never renewable: not due, not lagging
			continue
		case d.err != nil && rctx.Err() != nil:
			cut++ // due, but the run's time ran out before its definition came
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

	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		global  = make(chan struct{}, par)
		slowest time.Duration // the run's worst renewal so far
	)
	count := func(p *int) { mu.Lock(); *p++; mu.Unlock() }
	// Keys that can never be renewed leave the index now, and misplaced
	// ones move to their provider's shard: store writes only, beside the
	// renewals.
	wg.Go(func() { v.tidyIndex(rctx, orphans, misplaced, now, &res, count) })
	reserveLeft := func() time.Duration {
		reserve := o.Reserve
		if reserve <= 0 {
			mu.Lock()
			reserve = slowest // nothing measured yet: the first renewals go
			mu.Unlock()
		}
		return reserve
	}
	timeUp := func() bool {
		dl, ok := rctx.Deadline()
		if rctx.Err() != nil {
			return true
		}
		return ok && time.Until(dl) < reserveLeft()
	}
	// waitable is how long a renewal may wait for its provider's rate and
	// still start in time (-1: no deadline).
	waitable := func() time.Duration {
		dl, ok := rctx.Deadline()
		if !ok {
			return -1
		}
		return time.Until(dl) - reserveLeft()
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
	for _, prov := range order {
		keys := queues[prov]
		d := defs[prov]
		if d.err != nil {
			for range keys {
				if rctx.Err() != nil {
					count(&res.Deferred) // cut by the run's deadline: the next run takes it
					continue
				}
				count(&res.Failed)
				v.obs.Event(prov, "refresh_failed")
			}
			if rctx.Err() == nil {
				v.log.WarnContext(ctx, "refresh: cannot read provider", "provider", prov, "error", d.err)
			}
			continue
		}
		l := v.newLane(d.def, par)
		var next atomic.Int64
		for range min(l.workers, len(keys)) {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= len(keys) {
						return
					}
					// The run's slot first, then the provider's rate slot: a
					// rate slot reserved before waiting for a run slot would
					// let its request go late, right before the next slot's.
					if l.down.Load() || timeUp() || !acquire(rctx, global) {
						count(&res.Deferred)
						continue
					}
					if l.down.Load() || !l.admit(rctx, v, waitable()) {
						<-global
						count(&res.Deferred)
						continue
					}
					start := time.Now()
					outcome := v.renew(rctx, keys[i], d.def, now, o, &res, count)
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
		v.log.WarnContext(ctx, "refresh run left keys for the next run", "deferred", res.Deferred, "due", res.Due, "lag_s", res.LagSeconds,
			"definitions_cut", cut)
	}
	return res, nil
}

// shardsOf lists the shards of the providers' keys.
func shardsOf(providers []string) []int {
	var out []int
	for _, p := range providers {
		if sh := store.ShardOf(p); !slices.Contains(out, sh) {
			out = append(out, sh)
		}
	}
	return out
}

// definitionReads bounds a run's concurrent definition reads.
const definitionReads = 16

// definition is a provider's definition as a run read it.
type definition struct {
	def *provider.Definition
	err error
}

// readDefinitions reads the definitions of the items' providers (past any
// cache with reload), up to definitionReads at once, on ctx (the renewals'
// context): a run with many providers spends one read's time on them, not
// one per provider, and a read the deadline cuts leaves its keys for the
// next run.
func (v *Vendor) readDefinitions(ctx context.Context, items []*store.Item, reload bool) map[string]definition {
	var names []string
	seen := map[string]bool{}
	for _, it := range items {
		if !seen[it.Provider] {
			seen[it.Provider] = true
			names = append(names, it.Provider)
		}
	}
	out := make(map[string]definition, len(names))
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, definitionReads)
	)
	for _, name := range names {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			d := definition{}
			switch {
			case ctx.Err() != nil:
				d.err = ctx.Err()
			case reload:
				d.def, d.err = v.providers.Reload(ctx, name)
			default:
				d.def, d.err = v.providers.Get(ctx, name)
			}
			mu.Lock()
			out[name] = d
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// unmadeKeys finds the keys of the current registration that its
// definition no longer makes (an earlier key spelling): their key is not
// the one the definition makes for their scope, nor, read from the record,
// for their scope and target (the index does not project targets, which
// few keys have). A record that cannot be read now is left to the renewal.
func (v *Vendor) unmadeKeys(ctx context.Context, items []*store.Item, defs map[string]definition) map[string]bool {
	var check []*store.Item
	for _, it := range items {
		d := defs[it.Provider]
		if d.err != nil || it.Fingerprint != d.def.Fingerprint() {
			continue
		}
		if scopes, err := provider.NormalizeScope(it.Scope); err == nil && d.def.KeyFor(scopes).PK == it.PK {
			continue
		}
		check = append(check, it)
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, definitionReads)
		out = map[string]bool{}
	)
	for _, it := range check {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			rec, err := v.store.Get(ctx, it.PK, true)
			if err != nil || rec == nil {
				return
			}
			scopes, _ := provider.NormalizeScope(it.Scope)
			def := defs[it.Provider].def
			key := def.KeyFor(scopes)
			if rec.Resource != "" || rec.Audience != "" {
				key = def.KeyForTarget(scopes, provider.Target{Resources: strings.Fields(rec.Resource), Audiences: strings.Fields(rec.Audience)})
			}
			if key.PK != it.PK {
				mu.Lock()
				out[it.PK] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// tidyIndex retires the keys that can never be renewed (their provider is
// gone, or their registration changed: nobody can vend them again) and
// moves misplaced keys to their provider's shard, each with a CAS on the
// record as read. A key under a live lease is left alone: its holder's
// write places it anew, and the next run looks again.
func (v *Vendor) tidyIndex(ctx context.Context, orphans, misplaced []*store.Item, now time.Time, res *RefreshResult, count func(*int)) {
	var (
		wg  sync.WaitGroup
		sem = make(chan struct{}, definitionReads)
	)
	do := func(it *store.Item, retire bool) {
		defer func() { <-sem }()
		if !v.reindex(ctx, it, now, retire) {
			return
		}
		if retire {
			count(&res.Retired)
			return
		}
		count(&res.Moved)
	}
	for i, it := range append(slices.Clip(orphans), misplaced...) {
		if ctx.Err() != nil {
			return
		}
		sem <- struct{}{}
		wg.Go(func() { do(it, i < len(orphans)) })
	}
	wg.Wait()
}

// reindex writes the record back as it is (moving it to its provider's
// shard) or retired (out of the index), with a CAS on the record as read;
// false if it was not written (gone, leased, changed meanwhile).
func (v *Vendor) reindex(ctx context.Context, it *store.Item, now time.Time, retire bool) bool {
	cur, err := v.store.Get(ctx, it.PK, true)
	if err != nil || cur == nil || !cur.InRefreshIndex() || (cur.LeaseOwner != "" && now.Before(cur.LeaseUntil())) {
		return false
	}
	next := *cur
	next.Version, next.WriteID = cur.Version+1, randomID()
	if retire {
		next.RetiredAt = now.Unix()
	}
	if v.cas(ctx, &next, cur.Version) != nil {
		return false // changed meanwhile: the next run looks again
	}
	if retire {
		v.obs.Event(it.Provider, "retired")
		v.log.InfoContext(ctx, "refresh: key can never be renewed (provider removed or registration changed); retired",
			"provider", it.Provider, "scope", it.Scope)
	}
	return true
}

// lane is one provider's part of a run: the run owns the provider (its
// shard), so it takes the provider's whole cap and rate.
type lane struct {
	workers int // max_concurrent_fetches, within half the run's slots
	rate    *fleetRate
	down    atomic.Bool
}

func (v *Vendor) newLane(def *provider.Definition, par int) *lane {
	n := DefaultProviderFetches
	if def.MaxConcurrentFetches > 0 {
		n = def.MaxConcurrentFetches
	}
	l := &lane{workers: max(1, min(n, par/2))}
	if def.FetchRate > 0 {
		l.rate = &fleetRate{provider: def.Name, every: time.Duration(float64(time.Second) / def.FetchRate)}
	}
	return l
}

// admit waits for the provider's next request slot (fetch_rate), if it
// comes within waitable (-1: any time); false leaves the key for the next
// run.
func (l *lane) admit(ctx context.Context, v *Vendor, waitable time.Duration) bool {
	if l.rate == nil {
		return true
	}
	at, ok := l.rate.take(ctx, v, waitable)
	if !ok {
		return false
	}
	if d := at.Sub(v.opts.Now()); d > 0 {
		return v.opts.Sleep(ctx, d) == nil
	}
	return true
}

// fleetRate is a provider's fetch_rate kept in the table (record
// rate#{provider}, rate_next: when the next request may go), so it holds
// across runs: a rate below one request per run is kept, which a limiter
// per run (starting full) could not. Each request's slot is written (a CAS)
// before the request goes; a run killed after writing it wastes a slot and
// never exceeds the rate.
type fleetRate struct {
	provider string
	every    time.Duration
	mu       sync.Mutex
	cur      *store.Item // the record as last read or written
	read     bool
}

func ratePK(provider string) string { return "rate#" + provider }

// take reserves the next slot, if it comes within waitable of now.
func (r *fleetRate) take(ctx context.Context, v *Vendor, waitable time.Duration) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for range 3 {
		if !r.read {
			cur, err := v.store.Get(ctx, ratePK(r.provider), true)
			if err != nil {
				return time.Time{}, false
			}
			r.cur, r.read = cur, true
		}
		now := v.opts.Now()
		at := now
		var expect int64
		if r.cur != nil {
			at, expect = later(now, time.UnixMilli(r.cur.RateNextMS)), r.cur.Version
		}
		if waitable >= 0 && at.Sub(now) > waitable {
			return time.Time{}, false
		}
		next := &store.Item{PK: ratePK(r.provider), Version: nextVersion(expect, now), RateNextMS: at.Add(r.every).UnixMilli(),
			ExpiresAt: at.Add(r.every + time.Hour).Unix(), WriteID: randomID()}
		err := v.cas(ctx, next, expect)
		if err == nil {
			r.cur = next
			return at, true
		}
		r.read = false // another writer (an operator's run): read it again
		if !errors.Is(err, store.ErrConflict) {
			return time.Time{}, false
		}
	}
	return time.Time{}, false
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
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

// renew is one key of a refresher run, with its provider's definition.
func (v *Vendor) renew(ctx context.Context, it *store.Item, def *provider.Definition, now time.Time, o RefreshOptions, res *RefreshResult, count func(*int)) renewOutcome {
	scopes, _ := provider.NormalizeScope(it.Scope)
	key := def.KeyFor(scopes)
	if key.PK != it.PK {
		// A key with a target (resource, audience), which the index does
		// not project: read it from the record. A read that fails says
		// nothing about the key: it is left for the next run, never
		// retired on it.
		rec, err := v.store.Get(ctx, it.PK, true)
		switch {
		case err != nil && ctx.Err() != nil:
			count(&res.Deferred)
			return renewUnavailable
		case err != nil:
			v.log.WarnContext(ctx, "refresh: cannot read the key's record", "provider", def.Name, "scope", it.Scope, "error", err)
			count(&res.Failed)
			v.obs.Event(def.Name, "refresh_failed")
			return renewDone
		case rec == nil:
			count(&res.Skipped) // gone since the index was read
			return renewDone
		case rec.Resource != "" || rec.Audience != "":
			key = def.KeyForTarget(scopes, provider.Target{Resources: strings.Fields(rec.Resource), Audiences: strings.Fields(rec.Audience)})
		}
	}
	if key.PK != it.PK {
		// Not a key this definition makes (another registration's, or one
		// keyed another way): never renewable, so out of the index.
		if v.reindex(ctx, it, now, true) {
			count(&res.Retired)
		} else {
			count(&res.Skipped)
		}
		return renewDone
	}
	before := now.Add(o.Horizon + jitter(it.PK, v.opts.RefreshJitter))
	// Run in this goroutine, not detached (shared): when the run's context
	// ends, the renewal settles (lease released or failure recorded) before
	// renew returns, so the run returns with nothing half-done.
	_, err := v.run(ctx, &job{def: def, key: key, mode: modeScheduled, before: before, force: o.Force})
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
