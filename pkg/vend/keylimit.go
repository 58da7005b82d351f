package vend

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/store"
)

// A provider without allowed_scopes would let any permitted caller create
// scope keys without bound, each renewed until idle; so would one with
// allowed_resources or allowed_audiences (up to 10 values per request: 12
// allowed audiences alone make thousands of sets). Its new keys are
// admitted into a per-provider record (keys#{provider}) under max_keys;
// past it the request is refused before anything is cached or fetched.

// recheckFull is how often a full key record is checked against the table
// for members that have gone (expired by TTL): at most once a minute, so a
// caller repeating a refused request costs one read, not max_keys reads.
const recheckFull = time.Minute

func keysPK(provider string) string { return "keys#" + provider }

// admitKey records a new key of j's provider, or refuses it at max_keys.
func (v *Vendor) admitKey(ctx context.Context, j *job, now time.Time) error {
	limit := maxKeys(j.def)
	if !keysCounted(j.def, limit) {
		return nil // the allowed scope sets bound the keys already, below max_keys
	}
	for range 5 {
		cur, err := v.store.Get(ctx, keysPK(j.def.Name), true)
		if err != nil {
			return fmt.Errorf("read key count: %w", err)
		}
		next := &store.Item{PK: keysPK(j.def.Name), Provider: j.def.Name}
		var expect int64
		if cur != nil {
			*next = *cur
			expect = cur.Version
		}
		if _, ok := next.Members[j.key.PK]; ok {
			return nil
		}
		next.Members = maps.Clone(next.Members)
		if next.Members == nil {
			next.Members = map[string]int64{}
		}
		if len(next.Members) >= limit {
			if now.Before(time.UnixMilli(next.CheckedAtMS).Add(recheckFull)) {
				return v.keyLimit(j, limit)
			}
			// Drop members whose records are gone or hold nothing.
			v.pruneMembers(ctx, next.Members, now)
			next.CheckedAtMS = now.UnixMilli()
		}
		full := len(next.Members) >= limit
		if !full {
			next.Members[j.key.PK] = now.Unix()
		}
		next.Version = nextVersion(expect, now)
		next.ExpiresAt = now.AddDate(10, 0, 0).Unix() // it counts keys for as long as the provider exists
		next.WriteID = randomID()
		err = v.cas(ctx, next, expect)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("write key count: %w", err)
		}
		if full {
			return v.keyLimit(j, limit)
		}
		return nil
	}
	return &UnavailableError{Provider: j.def.Name, Reason: "too many new keys at once", RetryAfter: time.Second}
}

func maxKeys(def *provider.Definition) int {
	if def.MaxKeys <= 0 {
		return provider.DefaultMaxKeys
	}
	return def.MaxKeys
}

// keysCounted: the provider's keys are counted unless allowed_scopes bounds
// them to at most limit and callers may name no target beyond the
// defaults. n allowed scopes make 2^n scope sets (12 make 4096), and a
// caller may name any subset of the default resources or audiences (each
// always allowed), so they bound the keys only while 2^(n + defaults) is
// within limit.
func keysCounted(def *provider.Definition, limit int) bool {
	if len(def.AllowedScopes) == 0 || len(def.AllowedResources) > 0 || len(def.AllowedAudiences) > 0 {
		return true
	}
	n := len(def.AllowedScopes)
	for _, d := range [][]string{def.Resources, def.Audiences} {
		if len(d) > 1 { // one default is the default request
			n += len(d)
		}
	}
	return n >= 31 || 1<<n > limit
}

func (v *Vendor) keyLimit(j *job, limit int) error {
	v.obs.Event(j.def.Name, "key_limit")
	if len(j.def.AllowedScopes) > 0 {
		return fmt.Errorf("%w: provider %q has %d distinct scope sets and targets cached (max_keys %d); ask for a scope set and target already in use, narrow allowed_scopes/allowed_resources/allowed_audiences, or raise max_keys",
			provider.ErrKeyLimit, j.def.Name, limit, limit)
	}
	return fmt.Errorf("%w: provider %q has %d distinct scope sets cached (max_keys %d) and no allowed_scopes; ask for a scope set already in use, set allowed_scopes, or raise max_keys",
		provider.ErrKeyLimit, j.def.Name, limit, limit)
}

// pruneMembers removes members whose records are absent, expired, or hold
// neither a token nor a lease.
func (v *Vendor) pruneMembers(ctx context.Context, members map[string]int64, now time.Time) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 8)
		gone []string
	)
	for pk := range members {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			it, err := v.store.Get(ctx, pk, true) // a member dropped on a stale read would be over the limit
			if err != nil {
				return // unknown: keep it
			}
			leased := it != nil && it.LeaseOwner != "" && now.Before(it.LeaseUntil())
			if it == nil || (!leased && (it.Token.IsZero() || !now.Before(it.Expiry()))) {
				mu.Lock()
				gone = append(gone, pk)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, pk := range gone {
		delete(members, pk)
	}
}
