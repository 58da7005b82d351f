package vend

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/store"
)

// Usage (docs/design.md §3): a key's last_used_at is moved forward at most
// once per usage interval (see usageInterval), by the first store read that
// finds it older than that. The write is not on that read's path: it waits for this
// instance's next store read, and runs beside it, so no vend pays a round
// trip for it. L1 hits never write. The refresher retires keys nobody
// vended for IDLE_AFTER, and their records expire by TTL.

const (
	minUsageInterval = 5 * time.Minute
	maxPendingUses   = 1024 // records waiting for a usage write, per instance
	usesPerRead      = 8    // usage writes sent beside one store read
)

var errRetired = errors.New("key idle: retired, not renewed")

// usages holds usage writes waiting for this instance's next store read.
type usages struct {
	mu      sync.Mutex
	pending map[string]*store.Item
}

// usageInterval is how stale last_used_at may get before a read renews it:
// max(5 min, lifetime/10, idle period/24). Retirement needs usage to the
// hour, not to the minute; a finer interval would cost more writes than the
// renewals it saves (a used 1 h key: 24 usage writes a day against 30
// renewals).
func usageInterval(it *store.Item, idle time.Duration) time.Duration {
	return max(minUsageInterval, time.Duration(it.ExpiresAt-it.IssuedAt)*time.Second/10, idle/24)
}

// noteUse queues a usage write if the record's last_used_at is stale (or
// the key was retired and is wanted again).
func (v *Vendor) noteUse(def *provider.Definition, it *store.Item, now time.Time) {
	if it.RetiredAt == 0 && now.Sub(time.Unix(it.LastUsedAt, 0)) < usageInterval(it, v.idleAfter(def)) {
		return
	}
	v.uses.mu.Lock()
	defer v.uses.mu.Unlock()
	if v.uses.pending == nil {
		v.uses.pending = map[string]*store.Item{}
	}
	if len(v.uses.pending) < maxPendingUses {
		v.uses.pending[it.PK] = it
	}
}

// flushUses starts up to usesPerRead queued usage writes and returns a
// function that waits for them: the caller makes its own store read in
// between, so the writes cost it no extra round trip.
func (v *Vendor) flushUses(ctx context.Context) (wait func()) {
	v.uses.mu.Lock()
	var batch []*store.Item
	for pk, it := range v.uses.pending {
		if len(batch) == usesPerRead {
			break
		}
		batch = append(batch, it)
		delete(v.uses.pending, pk)
	}
	v.uses.mu.Unlock()
	if len(batch) == 0 {
		return func() {}
	}
	var wg sync.WaitGroup
	for _, it := range batch {
		wg.Go(func() { v.touch(ctx, it) })
	}
	return wg.Wait
}

// FlushUsage writes every queued usage write now, and waits for them. A
// Lambda handler calls it before returning (app.Flushing): an instance that
// never reads the table again (one call, then recycled) would otherwise
// lose them, and a key in use would be retired as idle.
func (v *Vendor) FlushUsage(ctx context.Context) {
	for {
		v.uses.mu.Lock()
		n := len(v.uses.pending)
		v.uses.mu.Unlock()
		if n == 0 || ctx.Err() != nil {
			return
		}
		v.flushUses(ctx)()
	}
}

// touch writes last_used_at = now on the record as it was read. The write
// is a CAS on that read's version, so it lands only if nothing changed
// since (no lease was taken, no token stored); otherwise it is dropped and
// a later read notices the stale usage again. It brings a retired key back
// into the refresh index.
func (v *Vendor) touch(ctx context.Context, it *store.Item) {
	now := v.opts.Now()
	if it.LeaseOwner != "" && now.Before(it.LeaseUntil()) {
		return // a holder's token write must not meet a moved version
	}
	next := *it
	next.Version = it.Version + 1
	next.LastUsedAt, next.RetiredAt = now.Unix(), 0
	next.WriteID = randomID()
	if err := v.store.Put(ctx, &next, it.Version); err != nil {
		v.log.DebugContext(ctx, "usage write not applied; a later read retries", "provider", it.Provider, "error", err)
	}
}

// idleAfter is the provider's idle_after_seconds, else Options.IdleAfter.
func (v *Vendor) idleAfter(def *provider.Definition) time.Duration {
	if def.IdleAfterSeconds > 0 {
		return time.Duration(def.IdleAfterSeconds) * time.Second
	}
	return v.opts.IdleAfter
}

// idle reports whether nobody vended the key for its idle period. A record
// written before usage was recorded counts from its adoption (see usedAt).
func (v *Vendor) idle(def *provider.Definition, it *store.Item, now time.Time) bool {
	return it.LastUsedAt != 0 && now.Sub(time.Unix(it.LastUsedAt, 0)) >= v.idleAfter(def)
}

// retire takes an idle key out of the refresh index, under a CAS on the
// version just read. Its token stays usable until it expires; a caller
// that wants it again brings it back (touch), or fetches it cold after TTL.
func (v *Vendor) retire(ctx context.Context, it *store.Item, now time.Time) error {
	next := *it
	next.Version = it.Version + 1
	next.RetiredAt = now.Unix()
	next.WriteID = randomID()
	if err := v.cas(ctx, &next, it.Version); err != nil {
		return errSkipped // changed meanwhile (used, renewed): the next run decides again
	}
	v.log.InfoContext(ctx, "key idle; no longer renewed", "provider", it.Provider, "scope", it.Scope,
		"last_used_at", time.Unix(it.LastUsedAt, 0).UTC().Format(time.RFC3339))
	return errRetired
}

// usedAt is the last_used_at a token write carries: now when a caller
// (or a caller-triggered renewal) wanted the token; kept as it was when the
// refresher renews it, or now for a record from before usage was recorded.
func usedAt(j *job, leased *store.Item, now time.Time) int64 {
	if j.mode == modeScheduled && leased.LastUsedAt != 0 {
		return leased.LastUsedAt
	}
	return now.Unix()
}
