package vend

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/token-vendor/token-vendor/pkg/store"
)

// A scheduled refresher run holds a lease on each refresh-index shard it
// renews (record shard#N), so runs that overlap (a slow run and the next
// schedule, or two fan-out dispatches) never renew one shard at once: the
// later run finds the shard busy and leaves it. The lease lasts until the
// run's deadline, so a run killed mid-way frees its shards when Lambda
// would have stopped it anyway.
func shardPK(shard int) string { return "shard#" + strconv.Itoa(shard) }

// maxShardLease bounds a shard lease taken by a run with no deadline: the
// longest a Lambda invocation can run.
const maxShardLease = 15 * time.Minute

// IsRecordKey reports whether pk is the key of a record the vendor writes
// (a token, a provider's key count, cooldown or rate, a refresher shard's lease):
// a listing page may end on any of them.
func IsRecordKey(pk string) bool {
	for _, p := range []string{"token#", "keys#", "cooldown#", "rate#", "shard#"} {
		if strings.HasPrefix(pk, p) {
			return true
		}
	}
	return false
}

// takeShards leases the shards it can; the rest are busy (another run holds
// them). release gives back every lease taken, best effort: one that is not
// given back lapses at the run's deadline.
func (v *Vendor) takeShards(ctx context.Context, shards []int) (held []int, busy int, release func(context.Context), err error) {
	until := v.opts.Now().Add(maxShardLease)
	if dl, ok := ctx.Deadline(); ok {
		until = v.opts.Now().Add(time.Until(dl))
	}
	owner := v.opts.InstanceID + "/run/" + randomID()
	leases := map[int]*store.Item{}
	release = func(ctx context.Context) {
		for sh, it := range leases {
			next := *it
			next.Version, next.LeaseOwner, next.LeaseUntilMS, next.WriteID = it.Version+1, "", 0, randomID()
			if err := v.cas(ctx, &next, it.Version); err != nil {
				v.log.WarnContext(ctx, "refresh: shard lease not released; it lapses at the run's deadline", "shard", sh, "error", err)
			}
		}
	}
	for _, sh := range shards {
		if sh < 0 || sh >= store.Shards {
			release(ctx)
			return nil, 0, nil, fmt.Errorf("%w: shard %d: want 0 to %d", ErrInvalidRequest, sh, store.Shards-1)
		}
		it, err := v.takeShard(ctx, sh, owner, until)
		if err != nil {
			release(ctx)
			return nil, 0, nil, err
		}
		if it == nil {
			busy++
			continue
		}
		leases[sh] = it
		held = append(held, sh)
	}
	return held, busy, release, nil
}

// takeShard takes one shard's lease, or returns nil if a live one is held.
func (v *Vendor) takeShard(ctx context.Context, shard int, owner string, until time.Time) (*store.Item, error) {
	pk := shardPK(shard)
	for range 3 {
		cur, err := v.store.Get(ctx, pk, true)
		if err != nil {
			return nil, err
		}
		next := &store.Item{PK: pk}
		var expect int64
		if cur != nil {
			if cur.LeaseOwner != "" && v.opts.Now().Before(cur.LeaseUntil()) {
				return nil, nil
			}
			next, expect = cur, cur.Version
		}
		next.Version = nextVersion(expect, v.opts.Now())
		next.LeaseOwner, next.LeaseUntilMS, next.WriteID = owner, until.UnixMilli(), randomID()
		err = v.cas(ctx, next, expect)
		if err == nil {
			return next, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return nil, err
		}
		// Another run wrote it between the read and the write: look again.
	}
	return nil, nil
}
