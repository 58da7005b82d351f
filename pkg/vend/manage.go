package vend

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
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
	key, err := resolve(def, req.Scope)
	if err != nil {
		return RevokeResult{}, err
	}
	j := &job{def: def, key: key}
	var res RevokeResult
	revoked := map[string]bool{} // token SHA-256s already sent to the provider
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
		live := !it.Token.IsZero() && now.Before(it.Expiry())
		if live && def.RevokeURL != "" {
			if tok, oerr := v.open(ctx, j, it); oerr != nil {
				v.log.ErrorContext(ctx, "cannot open cached token to revoke it", "provider", def.Name, "error", oerr)
			} else if sum := tokenSHA(tok); !revoked[sum] {
				revoked[sum] = true
				if rerr := v.fetcher.Revoke(ctx, def, tok); rerr != nil {
					v.log.WarnContext(ctx, "provider did not confirm revocation; purging the cached token anyway", "provider", def.Name, "error", rerr)
				} else {
					res.RevokedUpstream = true
				}
			}
		}
		next := *it
		next.Version = nextVersion(it.Version, now)
		next.LeaseOwner, next.LeaseUntilMS = "", 0
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
	v.l1.purgePK(key.PK) // again: a concurrent vend may have re-filled it
	v.obs.Event(def.Name, "revoked")
	return res, nil
}

// RefreshOptions select what the scheduled refresher renews.
type RefreshOptions struct {
	// Horizon: renew keys whose refresh_at falls before now + Horizon (the
	// time to the next run).
	Horizon time.Duration
	// Providers limits the run; empty means all.
	Providers []string
	// Force renews every selected key now, due or not.
	Force bool
	// Parallel bounds concurrent renewals (4). One provider gets at most
	// half of them, so a hung provider cannot hold up the others.
	Parallel int
	// Reserve is how long before the context's deadline the run stops
	// taking new keys (the lease duration: one renewal's worst case).
	Reserve time.Duration
}

// RefreshResult counts a refresher run.
type RefreshResult struct {
	Refreshed int `json:"refreshed"`
	Failed    int `json:"failed"`
	Skipped   int `json:"skipped"`
	// Deferred keys were due but left for the next run: the run's time was
	// up, or their provider failed earlier in the run.
	Deferred int `json:"deferred"`
	// Retired keys were due but idle (not vended for IDLE_AFTER): no longer
	// renewed, they expire by TTL unless a caller wants them again.
	Retired int `json:"retired"`
}

// RefreshDue renews every cached key due before the next run, each under the
// same lease callers use, so a run never races a caller's fetch. Keys closest
// to expiry go first; each provider gets its own lane, and a provider whose
// renewal failed as unavailable is not tried again in the same run.
func (v *Vendor) RefreshDue(ctx context.Context, o RefreshOptions) (RefreshResult, error) {
	now := v.opts.Now()
	before := now.Add(o.Horizon + v.opts.RefreshJitter)
	if o.Force {
		before = now.AddDate(100, 0, 0) // every key in the index
	}
	// The index lists what is due, and nothing else: a run reads O(keys
	// due), not O(table). It may lag the table; each key is confirmed by a
	// consistent read under the lease before anything is written.
	items, err := v.store.Due(ctx, before)
	if err != nil {
		return RefreshResult{}, fmt.Errorf("list due tokens: %w", err)
	}
	par := o.Parallel
	if par <= 0 {
		par = 4
	}
	reserve := o.Reserve
	if reserve <= 0 {
		reserve = v.opts.LeaseDuration
	}
	if dl, ok := ctx.Deadline(); ok {
		// A function timeout shorter than the lease still renews keys.
		reserve = min(reserve, time.Until(dl)/2)
	}
	lanes := map[string][]*store.Item{}
	for _, it := range items {
		before := now.Add(o.Horizon + jitter(it.PK, v.opts.RefreshJitter))
		if (len(o.Providers) > 0 && !slices.Contains(o.Providers, it.Provider)) || (!o.Force && it.RefreshAt >= before.Unix()) {
			continue // not asked for, or not due yet even with its jitter
		}
		lanes[it.Provider] = append(lanes[it.Provider], it)
	}
	var (
		mu     sync.Mutex
		res    RefreshResult
		wg     sync.WaitGroup
		global = make(chan struct{}, par)
	)
	count := func(p *int) { mu.Lock(); *p++; mu.Unlock() }
	timeUp := func() bool {
		dl, ok := ctx.Deadline()
		return ctx.Err() != nil || (ok && time.Until(dl) < reserve)
	}
	for prov, keys := range lanes {
		sort.Slice(keys, func(a, b int) bool { return keys[a].ExpiresAt < keys[b].ExpiresAt })
		var (
			next atomic.Int64
			down atomic.Bool
		)
		for range min(max(1, par/2), len(keys)) {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= len(keys) {
						return
					}
					if down.Load() || timeUp() {
						count(&res.Deferred)
						continue
					}
					global <- struct{}{}
					outcome := v.renew(ctx, keys[i], now, o, &res, count)
					<-global
					if outcome == renewUnavailable {
						down.Store(true)
						v.log.WarnContext(ctx, "refresh: provider unavailable; its other keys wait for the next run", "provider", prov)
					}
				}
			})
		}
	}
	wg.Wait()
	if res.Deferred > 0 {
		v.log.WarnContext(ctx, "refresh run left keys for the next run", "deferred", res.Deferred)
	}
	return res, nil
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
		count(&res.Skipped) // an old registration's token: let it expire
		return renewDone
	}
	before := now.Add(o.Horizon + jitter(it.PK, v.opts.RefreshJitter))
	_, err = v.shared(ctx, &job{def: def, key: key, mode: modeScheduled, before: before, force: o.Force})
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
