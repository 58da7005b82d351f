package vend

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/token-vendor/token-vendor/pkg/envelope"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/upstream"
)

type mode int

const (
	modeGet       mode = iota // vend a usable token, fetching if there is none
	modeForce                 // fetch a new token now (one issued since `since` will do)
	modeRejected              // drop the rejected token if it is still cached, then as modeGet
	modeAhead                 // background renewal after a caller saw refresh_at pass
	modeScheduled             // the refresher's renewal; force renews regardless of refresh_at
)

var modeNames = [...]string{"get", "force", "rejected", "ahead", "scheduled"}

type job struct {
	def      *provider.Definition
	key      provider.Key
	minTTL   time.Duration
	mode     mode
	since    time.Time // modeForce
	rejected string    // modeRejected: hex SHA-256
	before   time.Time // modeAhead/modeScheduled: renew if refresh_at is before this
	force    bool      // modeScheduled: renew even if not due
	unsealed bool      // the record last read holds no valid sealed token (treated as absent)
}

func (j *job) flightKey() string {
	k := j.key.PK + "|" + modeNames[j.mode] + "|" + strconv.FormatInt(int64(j.minTTL), 10)
	if j.mode == modeRejected {
		k += "|" + j.rejected
	}
	return k
}

// shared runs j once per process for concurrent identical jobs. The shared
// run is detached from the first caller's cancellation (others may still
// want its result) but keeps that caller's deadline, bounded by twice the
// lease so a hung dependency cannot pin it forever.
func (v *Vendor) shared(ctx context.Context, j *job) (Token, error) {
	ch := v.sf.DoChan(j.flightKey(), func() (any, error) {
		deadline := time.Now().Add(2 * v.opts.LeaseDuration) // context deadlines are wall-clock, whatever the injected clock says
		if dl, ok := ctx.Deadline(); ok {
			deadline = dl
		}
		jctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
		defer cancel()
		return v.run(jctx, j)
	})
	select {
	case r := <-ch:
		t, _ := r.Val.(Token)
		return t, r.Err
	case <-ctx.Done():
		return Token{}, &UnavailableError{Provider: j.def.Name, Reason: "caller's deadline passed while the token was being fetched", RetryAfter: time.Second, Err: ctx.Err()}
	}
}

// run is the lease protocol. Each pass reads the record and either returns a
// usable token, waits for another holder's lease, or takes the lease with a
// compare-and-swap on the record's version and fetches. Every write bumps the
// version, so a holder whose lease lapsed and was taken over cannot store its
// token over the newer one.
func (v *Vendor) run(ctx context.Context, j *job) (Token, error) {
	if time.Now().UnixNano() < v.storeDownUntil.Load() {
		return v.withoutStore(ctx, j, errStoreBreaker)
	}
	consistent := j.mode != modeGet
	for pass := 0; ; pass++ {
		var joinUses func()
		if pass == 0 {
			joinUses = v.flushUses(ctx) // queued usage writes ride along with this read
		}
		it, err := v.store.Get(ctx, j.key.PK, consistent)
		if joinUses != nil {
			joinUses()
		}
		if err != nil {
			return v.withoutStore(ctx, j, err)
		}
		consistent = true // after a conflict or a wait, only the latest write will do
		now := v.opts.Now()
		j.unsealed = false
		cur, usable, oerr := v.usable(ctx, j, it, now)
		if oerr != nil {
			// A live token we cannot decrypt (KMS throttled or down) is not
			// an absent one: fetching under the lease would let every miss on
			// every instance go upstream. Vend as without a store instead:
			// L1, else one rate-limited request per instance.
			return v.withoutStore(ctx, j, oerr)
		}
		held := it != nil && it.LeaseOwner != "" && now.Before(it.LeaseUntil())

		switch j.mode {
		case modeGet:
			if usable {
				v.noteUse(j.def, it, now)
				if !v.opts.DisableRefreshAhead && it.RefreshAt <= now.Unix() && !held {
					v.refreshAhead(j)
				}
				return cur, nil
			}
		case modeForce:
			if usable && pass > 0 && j.satisfiedBy(it, cur) {
				return cur, nil // another caller's forced refresh finished while we waited
			}
			if it != nil && !held {
				// One forced upstream request per key per interval, fleet-wide:
				// a flood of forced refreshes gets the token the first one fetched.
				if next := time.UnixMilli(it.ForcedAtMS).Add(v.opts.RejectInterval); now.Before(next) {
					if usable {
						return cur, nil
					}
					return Token{}, &UnavailableError{Provider: j.def.Name, RetryAfter: next.Sub(now).Round(time.Second) + time.Second,
						Reason: "a forced refresh of this key is limited to once per " + v.opts.RejectInterval.String()}
				}
			}
		case modeRejected:
			if usable && j.satisfiedBy(it, cur) {
				return cur, nil
			}
			if usable && !held {
				if next := time.UnixMilli(it.RejectedAtMS).Add(v.opts.RejectInterval); now.Before(next) {
					return Token{}, &UnavailableError{Provider: j.def.Name, RetryAfter: next.Sub(now).Round(time.Second) + time.Second,
						Reason: "the new token was rejected too; replacing a rejected token is limited to once per " + v.opts.RejectInterval.String()}
				}
			}
		case modeAhead, modeScheduled:
			if held || it == nil || it.Token.IsZero() || (!j.force && (it.RefreshAt >= j.before.Unix() || young(it, now))) {
				return Token{}, errSkipped
			}
			if j.mode == modeScheduled && v.idle(j.def, it, now) {
				return Token{}, v.retire(ctx, it, now)
			}
		}
		if err := v.blocked(ctx, j, it, now); err != nil {
			return Token{}, err
		}
		if held {
			if err := v.opts.Sleep(ctx, pollDelay(pass, it.LeaseUntil().Sub(now))); err != nil {
				return Token{}, &UnavailableError{Provider: j.def.Name, Reason: "timed out waiting for another instance's fetch", RetryAfter: time.Second, Err: err}
			}
			v.obs.Event(j.def.Name, "lease_wait")
			continue
		}
		if it == nil || it.Token.IsZero() || !now.Before(it.Expiry()) {
			// A token is about to be stored for a key that may not be a
			// member: absent, a tombstone, expired but not yet removed by TTL,
			// or a first fetch that failed. Members pass at the cost of a read.
			if err := v.admitKey(ctx, j, now); err != nil {
				if _, busy := IsUnavailable(err); busy || errors.Is(err, provider.ErrKeyLimit) {
					return Token{}, err
				}
				return v.withoutStore(ctx, j, err) // the key count could not be read or written
			}
		}
		leased, err := v.acquire(ctx, j, it, usable && j.mode == modeRejected, now)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return v.withoutStore(ctx, j, err)
		}
		if j.mode == modeRejected || j.mode == modeForce {
			v.l1.purgePK(j.key.PK)
		}
		return v.fetchUnderLease(ctx, j, leased)
	}
}

// pollDelay backs off from 25 ms to 500 ms, never sleeping far past the
// lease's end, where a waiter may take over.
func pollDelay(pass int, leaseLeft time.Duration) time.Duration {
	d := 25 * time.Millisecond << min(pass, 5)
	if d > 500*time.Millisecond {
		d = 500 * time.Millisecond
	}
	if leaseLeft > 0 && leaseLeft+5*time.Millisecond < d {
		d = leaseLeft + 5*time.Millisecond
	}
	return d
}

// usable opens the record's token if it has at least the caller's min_ttl
// (capped at half its lifetime) left. Records past expires_at are ignored:
// DynamoDB's TTL deletes them lazily. A token that qualifies but cannot be
// opened is an error, not an absence.
func (v *Vendor) usable(ctx context.Context, j *job, it *store.Item, now time.Time) (Token, bool, error) {
	if it == nil || it.Token.IsZero() || !now.Before(it.Expiry()) {
		return Token{}, false, nil
	}
	lifetime := time.Duration(it.ExpiresAt-it.IssuedAt) * time.Second
	if it.Expiry().Sub(now) < effectiveMinTTL(j.minTTL, lifetime) {
		return Token{}, false, nil
	}
	plain, err := v.open(ctx, j, it)
	if errors.Is(err, errUnsealed) {
		// Not a token this vendor sealed for this record as it stands
		// (plaintext, another record's, another expiry's): whoever wrote it
		// could not seal, so it is no token of ours. Absent, and replaced
		// under the lease.
		v.log.WarnContext(ctx, "cached record holds no valid sealed token; treated as absent", "provider", j.def.Name, "pk", it.PK, "reason", err.Error())
		v.obs.Event(j.def.Name, "unsealed_record")
		j.unsealed = true
		return Token{}, false, nil
	}
	if err != nil {
		v.log.ErrorContext(ctx, "cannot open cached token", "provider", j.def.Name, "error", err)
		return Token{}, false, fmt.Errorf("open cached token: %w", err)
	}
	return Token{Provider: j.def.Name, AccessToken: plain, TokenType: it.TokenType, JKT: it.JKT, Scope: it.Scope,
		ExpiresAt: it.Expiry(), Source: FromL2, lifetime: lifetime}, true, nil
}

// young reports whether a token is in the first half of its life. Renewal
// ahead of time never happens then, whatever refresh_at, horizon and jitter
// say, so a key costs at most one upstream request per half lifetime.
func young(it *store.Item, now time.Time) bool {
	half := time.Duration(it.ExpiresAt-it.IssuedAt) * time.Second / 2
	return now.Before(time.Unix(it.IssuedAt, 0).Add(half))
}

// blocked enforces the remembered permanent failure and the provider cooldown.
func (v *Vendor) blocked(ctx context.Context, j *job, it *store.Item, now time.Time) error {
	if it != nil && j.mode != modeForce && now.Before(time.UnixMilli(it.FailedUntilMS)) {
		return &upstream.RetrieveError{Provider: j.def.Name, Kind: upstream.Permanent, Code: it.LastError,
			Description: "remembered from a recent attempt; not retried before " + time.UnixMilli(it.FailedUntilMS).UTC().Format(time.RFC3339)}
	}
	cd, err := v.store.Get(ctx, cooldownPK(j.def.Name), false)
	if err != nil || cd == nil {
		return nil // a cooldown we cannot read is no reason to refuse
	}
	if until := time.UnixMilli(cd.CooldownUntil); now.Before(until) {
		v.obs.Event(j.def.Name, "cooldown_refusal")
		return &UnavailableError{Provider: j.def.Name, Reason: "provider is cooling down after " + cd.LastError,
			RetryAfter: until.Sub(now).Round(time.Second) + time.Second}
	}
	return nil
}

func cooldownPK(provider string) string { return "cooldown#" + provider }

// acquire takes the lease with a CAS on the version read.
func (v *Vendor) acquire(ctx context.Context, j *job, it *store.Item, drop bool, now time.Time) (*store.Item, error) {
	next := &store.Item{}
	var expect int64
	if it != nil {
		*next = *it
		expect = it.Version
	}
	next.PK, next.Provider, next.Scope, next.Fingerprint = j.key.PK, j.def.Name, j.key.Scope(), j.def.Fingerprint()
	next.Resource, next.Audience = strings.Join(j.key.Target.Resources, " "), strings.Join(j.key.Target.Audiences, " ")
	next.Version = nextVersion(expect, now)
	next.LeaseOwner = v.opts.InstanceID + "/" + strconv.FormatUint(v.seq.Add(1), 10)
	leaseUntil := now.Add(v.opts.LeaseDuration)
	next.LeaseUntilMS = leaseUntil.UnixMilli()
	if drop {
		next.RejectedAtMS = now.UnixMilli()
	}
	if j.mode == modeForce {
		next.ForcedAtMS = now.UnixMilli()
	}
	if drop || j.unsealed || !now.Before(next.Expiry()) {
		// The token is dropped or dead; the record lives on as the lease, and
		// its TTL must not delete it under the holder.
		dropToken(next, leaseUntil)
	}
	next.WriteID = randomID()
	return next, v.cas(ctx, next, expect)
}

// dropToken empties a record's token; the record itself lives on (as a lease
// or a revocation tombstone) until an hour after until, when TTL removes it.
func dropToken(it *store.Item, until time.Time) {
	it.Token, it.TokenType, it.JKT, it.IssuedAt, it.RefreshAt = store.Secret{}, "", "", 0, 0
	it.ExpiresAt = until.Add(time.Hour).Unix()
}

// nextVersion is the version a write after expect carries. A record's first
// version is its creation time in microseconds, not 1, so versions never
// repeat across generations of a key (revoked, or deleted by TTL and made
// again): a holder of a lease on an earlier generation can never match a
// later one's version (no ABA).
func nextVersion(expect int64, now time.Time) int64 {
	if expect == 0 {
		return max(now.UnixMicro(), 1)
	}
	return expect + 1
}

// cas writes with a condition on the version. A write whose outcome is
// unknown (timeout, 5xx) is read back: the write id says whether it landed.
// A conflict is checked the same way, from the record the conflict carries:
// the SDK retries a write that got a 5xx after landing, and the retry fails
// on the write's own version.
func (v *Vendor) cas(ctx context.Context, next *store.Item, expect int64) error {
	err := v.store.Put(ctx, next, expect)
	if err == nil {
		return nil
	}
	if errors.Is(err, store.ErrConflict) {
		if cur, ok := store.CurrentOnConflict(err); ok && cur.WriteID == next.WriteID {
			v.log.InfoContext(ctx, "conditional write was retried after it had landed", "provider", next.Provider)
			return nil
		}
		return err
	}
	got, rerr := v.store.Get(ctx, next.PK, true)
	switch {
	case rerr != nil:
		return err
	case got != nil && got.WriteID == next.WriteID:
		v.log.InfoContext(ctx, "conditional write timed out but had landed", "provider", next.Provider)
		return nil
	case (got == nil && expect == 0) || (got != nil && got.Version == expect):
		return v.store.Put(ctx, next, expect) // it did not land; nothing else did either
	default:
		return store.ErrConflict
	}
}

// fetchUnderLease asks the provider and stores the answer with a CAS on the
// leased version.
func (v *Vendor) fetchUnderLease(ctx context.Context, j *job, leased *store.Item) (Token, error) {
	// The fetch stops short of the caller's deadline, and its outcome is
	// written with a settle context made after it: a fetch that ran out the
	// deadline must still free the lease or record its failure, or the fleet
	// waits out the whole lease. It also stops when the lease lapses: an
	// instance that stalled (frozen, starved) must not go on retrying a
	// provider on a key another instance may own by now.
	fctx, fcancel := fetchContext(ctx, leased.LeaseUntil().Sub(v.opts.Now()))
	defer fcancel()
	def := j.def
	up, err := v.fetch(fctx, def, j.key)
	if re, ok := upstream.AsRetrieveError(err); ok && re.IsClientAuth() {
		// Maybe the secret was rotated: re-read it once, bypassing caches.
		if fresh, rerr := v.providers.Reload(ctx, def.Name); rerr == nil && !fresh.SameCredentials(def) {
			if fresh.Fingerprint() != def.Fingerprint() {
				rctx, rcancel := settleContext(ctx)
				defer rcancel()
				v.release(rctx, leased)
				return Token{}, errRegistrationChanged
			}
			v.log.InfoContext(ctx, "provider refused credentials; retrying with the re-read secret", "provider", def.Name)
			def = fresh
			up, err = v.fetch(fctx, def, j.key)
		}
	}
	sctx, scancel := settleContext(ctx)
	defer scancel()
	now := v.opts.Now()
	if err != nil && j.mode == modeScheduled && cutByDeadline(ctx, fctx) {
		// The refresher run's own deadline cut this renewal: nothing says the
		// provider failed, so no failure is recorded and no cooldown opened
		// (it would refuse callers for nothing); the lease is released.
		v.release(sctx, leased)
		return Token{}, &UnavailableError{Provider: def.Name, Reason: "the refresher run's deadline passed during the renewal", RetryAfter: time.Second, Err: fmt.Errorf("%w: %w", errRunCut, err)}
	}
	if err != nil {
		if now.Before(leased.LeaseUntil()) {
			v.recordFailure(sctx, j, leased, err, now)
		} else {
			// The lease lapsed under us: the failure may be our own stall,
			// not the provider's, so it opens no cooldown, and the record
			// belongs to whoever took the lease over.
			v.log.WarnContext(ctx, "lease lapsed during the fetch; not recording its failure", "provider", def.Name, "error", err)
		}
		// A holder that stalled past its lease (GC pause, frozen process)
		// may find that another instance took over and stored a token
		// meanwhile: hand that out rather than refuse.
		if t, ok := v.storedSince(sctx, j, leased, v.opts.Now()); ok {
			v.log.InfoContext(ctx, "fetch failed but another instance stored a token meanwhile", "provider", def.Name)
			return t, nil
		}
		return Token{}, v.failure(j, err)
	}
	t := Token{Provider: def.Name, AccessToken: up.AccessToken, TokenType: up.TokenType, JKT: up.JKT, Scope: j.key.Scope(),
		ExpiresAt: up.Expiry.Truncate(time.Second), Source: FromUpstream, lifetime: up.Lifetime}
	next := *leased
	next.Version = leased.Version + 1
	next.LeaseOwner, next.LeaseUntilMS = "", 0
	next.LastError, next.LastErrorAt, next.FailedUntilMS = "", 0, 0
	next.TokenType, next.JKT = up.TokenType, up.JKT
	next.IssuedAt = up.IssuedAt.Unix()
	next.ExpiresAt = up.Expiry.Unix()
	next.RefreshAt = refreshAt(def, up).Unix()
	next.LastUsedAt, next.RetiredAt = usedAt(j, leased, now), 0
	next.WriteID = randomID()
	sealed, err := v.seal(sctx, j, &next, up.AccessToken)
	if err != nil {
		// The token is good; only caching it failed. Hand it out, free the lease.
		v.log.ErrorContext(ctx, "cannot seal token; not cached", "provider", def.Name, "error", err)
		v.release(sctx, leased)
		return t, nil
	}
	next.Token = sealed
	if err := v.cas(sctx, &next, leased.Version); err != nil {
		v.log.WarnContext(ctx, "token fetched but not stored (lease lost or store failing)", "provider", def.Name, "error", err)
		v.obs.Event(def.Name, "store_write_lost")
	}
	return t, nil
}

// settleTimeout bounds the writes that settle a fetch (token, failure,
// release) once the caller's context is gone.
const settleTimeout = 2 * time.Second

// settleContext outlives ctx's cancellation but not by much: what the
// caller has left, at least settleTimeout (10 s when ctx has no deadline),
// and never past a hard deadline set on ctx (withHardDeadline).
func settleContext(ctx context.Context) (context.Context, context.CancelFunc) {
	d := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		d = max(settleTimeout, time.Until(dl))
	}
	end := time.Now().Add(d)
	if hard, ok := ctx.Value(hardDeadlineKey{}).(time.Time); ok && hard.Before(end) {
		end = hard
	}
	return context.WithDeadline(context.WithoutCancel(ctx), end)
}

type hardDeadlineKey struct{}

// withHardDeadline marks ctx with a time no write may outlive, not even
// one settling a fetch: a refresher run's own deadline, after which Lambda
// has stopped the invocation and its result is lost. A settle write cut
// there leaves the lease to lapse; it never half-writes (every write is
// one conditional PutItem).
func withHardDeadline(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, hardDeadlineKey{}, t)
}

// fetchContext ends the upstream fetch when the lease lapses (leaseLeft
// from now), and settleTimeout before ctx's deadline when there is room
// for that.
func fetchContext(ctx context.Context, leaseLeft time.Duration) (context.Context, context.CancelFunc) {
	end := time.Now().Add(max(leaseLeft, 0))
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) > 2*settleTimeout && dl.Add(-settleTimeout).Before(end) {
		end = dl.Add(-settleTimeout)
	}
	return context.WithDeadline(ctx, end)
}

// cutByDeadline reports whether a fetch ended because its caller's deadline
// (not the lease, not the provider) ran out.
func cutByDeadline(ctx, fctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && fctx.Err() != nil && time.Until(dl) <= 2*settleTimeout
}

// storedSince reads the record again after a failed fetch and returns a
// token that satisfies the job, if another instance stored one after the
// lease was taken.
func (v *Vendor) storedSince(ctx context.Context, j *job, leased *store.Item, now time.Time) (Token, bool) {
	if j.mode == modeAhead || j.mode == modeScheduled {
		return Token{}, false
	}
	it, err := v.store.Get(ctx, j.key.PK, true)
	if err != nil || it == nil || sameSecret(it.Token, leased.Token) {
		return Token{}, false
	}
	cur, ok, _ := v.usable(ctx, j, it, now)
	return cur, ok && j.satisfiedBy(it, cur)
}

// satisfiedBy reports whether a usable stored token (cur, from it) answers
// the job without a fetch: any token for a get, another token than the
// rejected one, a token issued since a forced refresh began.
func (j *job) satisfiedBy(it *store.Item, cur Token) bool {
	switch j.mode {
	case modeRejected:
		return tokenSHA(cur.AccessToken) != j.rejected
	case modeForce:
		return !time.Unix(it.IssuedAt, 0).Before(j.since.Truncate(time.Second))
	}
	return true
}

// refreshAt is expires_at − max(60 s, lifetime/5), or the provider's own
// refresh_before_seconds, and never in the first half of the token's life:
// a 60 s token renewed 60 s before expiry would be renewed on every read.
func refreshAt(def *provider.Definition, up *upstream.Token) time.Time {
	before := max(60*time.Second, up.Lifetime/5)
	if def.RefreshBeforeSeconds > 0 {
		before = time.Duration(def.RefreshBeforeSeconds) * time.Second
	}
	before = min(before, up.Lifetime/2)
	at := up.Expiry.Add(-before)
	if at.Before(up.IssuedAt) {
		at = up.IssuedAt
	}
	return at
}

func (v *Vendor) fetch(ctx context.Context, def *provider.Definition, key provider.Key) (*upstream.Token, error) {
	start := time.Now()
	up, err := v.fetcher.Fetch(ctx, def, key)
	code := ""
	if re, ok := upstream.AsRetrieveError(err); ok {
		code = re.Code
	} else if err != nil {
		code = "error"
	}
	v.obs.Upstream(def.Name, time.Since(start), code)
	v.noteCertificate(ctx, def)
	return up, err
}

// certificateWarning is how far ahead an expiring client certificate is reported.
const certificateWarning = 30 * 24 * time.Hour

// noteCertificate reports the days a provider's client certificate (RFC
// 8705) has left, as a metric on every fetch and as a warning, at most
// hourly, once fewer than 30 remain: renewing it takes a registration
// change at the provider, which is best not discovered at expiry.
func (v *Vendor) noteCertificate(ctx context.Context, def *provider.Definition) {
	ce, ok := v.fetcher.(interface {
		CertificateExpiry(*provider.Definition) (time.Time, bool)
	})
	if !ok {
		return
	}
	notAfter, ok := ce.CertificateExpiry(def)
	if !ok {
		return
	}
	now := v.opts.Now()
	left := notAfter.Sub(now)
	v.obs.Value(def.Name, "ClientCertificateDaysLeft", "Count", math.Floor(left.Hours()/24))
	if left >= certificateWarning {
		return
	}
	if last, ok := v.certWarned.Load(def.Name); ok && now.Sub(last.(time.Time)) < time.Hour {
		return
	}
	v.certWarned.Store(def.Name, now)
	v.log.WarnContext(ctx, "client certificate expires soon; renew it and update the provider's secret", "provider", def.Name,
		"not_after", notAfter.UTC().Format(time.RFC3339), "days_left", int(left.Hours()/24))
}

// release gives the lease back without changing the token.
func (v *Vendor) release(ctx context.Context, leased *store.Item) {
	next := *leased
	next.Version++
	next.LeaseOwner, next.LeaseUntilMS = "", 0
	next.WriteID = randomID()
	if err := v.cas(ctx, &next, leased.Version); err != nil {
		v.log.DebugContext(ctx, "lease release failed; it will lapse", "provider", leased.Provider, "error", err)
	}
}

// recordFailure opens the fleet-wide cooldown after a 429 or repeated 5xx,
// then releases the lease noting the failure on the record, and remembers
// permanent failures for PermanentErrorTTL. The cooldown is written first:
// released earlier, the lease would let a waiter ask the provider again
// before the cooldown is visible.
func (v *Vendor) recordFailure(ctx context.Context, j *job, leased *store.Item, err error, now time.Time) {
	if errors.Is(err, context.Canceled) {
		// The fetch's own caller canceled it (a deadline is not this):
		// nothing says the provider failed, so no cooldown refuses the
		// fleet and no failure is noted; the lease is released.
		v.release(ctx, leased)
		return
	}
	re, _ := upstream.AsRetrieveError(err)
	code := "error"
	if re != nil {
		code = re.Code
		switch {
		case re.Kind == upstream.RateLimited:
			cool := re.RetryAfter
			if cool <= 0 {
				cool = v.opts.RateLimitCooldown
			}
			v.openCooldown(ctx, j.def.Name, code, cool, false)
		case re.Kind == upstream.Transient && re.RetryAfter > 0:
			// The provider said when to come back, on the first attempt or a later one.
			v.openCooldown(ctx, j.def.Name, code, re.RetryAfter, false)
		case re.Kind == upstream.Transient:
			// Retries exhausted or the deadline ran out: 5xx, timeouts and
			// network errors alike. Without a cooldown every waiter would
			// take the lease in turn and pay its own timeout.
			v.openCooldown(ctx, j.def.Name, code, v.opts.ServerErrorCooldown, true)
		}
	} else {
		v.openCooldown(ctx, j.def.Name, code, v.opts.ServerErrorCooldown, true)
	}
	next := *leased
	next.Version = nextVersion(leased.Version, now)
	next.LeaseOwner, next.LeaseUntilMS = "", 0
	next.LastError, next.LastErrorAt = code, now.Unix()
	if re != nil && re.Kind == upstream.Permanent {
		next.FailedUntilMS = now.Add(v.opts.PermanentErrorTTL).UnixMilli()
	}
	next.WriteID = randomID()
	if err := v.cas(ctx, &next, leased.Version); err != nil {
		v.log.DebugContext(ctx, "could not record failure", "provider", j.def.Name, "error", err)
	}
}

// maxCooldown bounds how long a persistent outage backs the fleet off: the
// fleet probes a dead provider about once a minute and notices its return
// within a minute.
const maxCooldown = time.Minute

// openCooldown records, for every instance, that the provider must not be
// asked for d. With grow, a cooldown opened again soon after the previous
// one ended lasts twice as long (up to maxCooldown), so a provider that stays
// down is probed less and less often.
func (v *Vendor) openCooldown(ctx context.Context, provider, reason string, d time.Duration, grow bool) {
	pk := cooldownPK(provider)
	now := v.opts.Now()
	for range 3 {
		cur, err := v.store.Get(ctx, pk, true)
		if err != nil {
			return
		}
		next := &store.Item{PK: pk, Provider: provider}
		var expect int64
		length := d
		if cur != nil {
			*next = *cur
			expect = cur.Version
			prevEnd := time.UnixMilli(cur.CooldownUntil)
			prevLen := prevEnd.Sub(time.UnixMilli(cur.CooldownFrom))
			if grow && cur.CooldownFrom > 0 && now.Sub(prevEnd) < prevLen+time.Minute {
				length = min(max(d, 2*prevLen), maxCooldown)
			}
			if !now.Add(length).After(prevEnd) {
				return // a longer cooldown is already open
			}
		}
		until := now.Add(length)
		next.Version = nextVersion(expect, now)
		next.CooldownFrom = now.UnixMilli()
		next.CooldownUntil = until.UnixMilli()
		next.LastError = reason
		next.LastErrorAt = now.Unix()
		next.ExpiresAt = until.Add(time.Hour).Unix()
		next.WriteID = randomID()
		if err := v.cas(ctx, next, expect); !errors.Is(err, store.ErrConflict) {
			v.log.WarnContext(ctx, "provider cooldown opened", "provider", provider, "reason", reason, "seconds", int(length.Seconds()))
			v.obs.Event(provider, "cooldown_opened")
			return
		}
	}
}

// failure turns an upstream error into what callers get: permanent refusals
// as they are, anything else as "unavailable, retry after".
func (v *Vendor) failure(j *job, err error) error {
	re, ok := upstream.AsRetrieveError(err)
	if ok && re.Kind == upstream.Permanent {
		return re
	}
	retry := time.Second
	if ok && re.RetryAfter > 0 {
		retry = re.RetryAfter
	}
	return &UnavailableError{Provider: j.def.Name, Reason: "provider unavailable", RetryAfter: retry, Err: err}
}

// withoutStore vends while the store is failing: from L1 regardless of age,
// else straight from the provider, rate-limited per instance so a table
// outage never becomes a flood of token requests.
func (v *Vendor) withoutStore(ctx context.Context, j *job, cause error) (Token, error) {
	if ctx.Err() != nil {
		// The caller's own deadline (or cancellation) failed the store
		// call: that says nothing about DynamoDB, so the breaker stays shut
		// for everyone else on this instance.
		return Token{}, &UnavailableError{Provider: j.def.Name, Reason: "the caller's deadline passed", RetryAfter: time.Second, Err: fmt.Errorf("%w: %w", errRunCut, cause)}
	}
	if errors.Is(cause, store.ErrRejected) {
		// DynamoDB is up and refused this one record: not an outage, so no
		// breaker (it would refuse every provider on the instance) and no
		// vending around the store.
		v.log.ErrorContext(ctx, "the token store refused a record", "provider", j.def.Name, "error", cause)
		return Token{}, fmt.Errorf("provider %s: the token store refused this key's record: %w", j.def.Name, cause)
	}
	if !errors.Is(cause, errStoreBreaker) {
		v.storeDownUntil.Store(time.Now().Add(v.opts.StoreRetryAfter).UnixNano())
		v.log.WarnContext(ctx, "token store unavailable; vending without it", "provider", j.def.Name, "error", cause,
			"retry_store_in_s", v.opts.StoreRetryAfter.Seconds())
	}
	v.obs.Event(j.def.Name, "store_fallback")
	if j.mode == modeAhead || j.mode == modeScheduled {
		return Token{}, fmt.Errorf("token store unavailable: %w", cause)
	}
	now := v.opts.Now()
	if j.mode == modeGet {
		if t, ok := v.l1.stale(j.key.PK, now, j.minTTL); ok {
			return t, nil
		}
	}
	if !v.fallback.Allow() {
		return Token{}, &UnavailableError{Provider: j.def.Name, RetryAfter: time.Second, Err: cause,
			Reason: "token store unavailable and this instance's upstream rate limit is reached"}
	}
	up, err := v.fetch(ctx, j.def, j.key)
	if err != nil {
		return Token{}, v.failure(j, err)
	}
	return Token{Provider: j.def.Name, AccessToken: up.AccessToken, TokenType: up.TokenType, JKT: up.JKT, Scope: j.key.Scope(),
		ExpiresAt: up.Expiry.Truncate(time.Second), Source: FromUpstream, lifetime: up.Lifetime}, nil
}

// errStoreBreaker is the cause while the store breaker is open.
var errStoreBreaker = errors.New("token store skipped after a recent failure")

// refreshAhead renews in the background: the caller already has its token.
func (v *Vendor) refreshAhead(j *job) {
	aj := &job{def: j.def, key: j.key, mode: modeAhead, before: v.opts.Now().Add(time.Second)}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), v.opts.LeaseDuration)
		defer cancel()
		if _, err := v.shared(ctx, aj); err != nil && !errors.Is(err, errSkipped) {
			v.log.Warn("background refresh failed; the cached token is still served", "provider", j.def.Name, "error", err)
		}
	}()
}

// EncryptionContextKeys are the keys of the KMS encryption context a cached
// token is sealed under; template.yaml's KMS grants are conditioned on them.
var EncryptionContextKeys = []string{"provider", "pk"}

// SealedRecordFields are the record attributes a sealed token is bound to
// besides its KMS context (GCM additional data): everything that goes into
// the token handed out, or decides when it is handed out, and that stays
// put as long as the token does. Putting an old sealed token back under a
// new expiry, or under another scope or target, does not open.
var SealedRecordFields = []string{"expires_at", "issued_at", "token_type", "scope", "resource", "audience"}

// errUnsealed: with sealing on, the record holds no token sealed for it.
var errUnsealed = errors.New("no valid sealed token")

func (v *Vendor) encryptionContext(j *job) map[string]string {
	return map[string]string{EncryptionContextKeys[0]: j.def.Name, EncryptionContextKeys[1]: j.key.PK}
}

func sealedFields(it *store.Item) map[string]string {
	return map[string]string{
		SealedRecordFields[0]: strconv.FormatInt(it.ExpiresAt, 10),
		SealedRecordFields[1]: strconv.FormatInt(it.IssuedAt, 10),
		SealedRecordFields[2]: it.TokenType,
		SealedRecordFields[3]: it.Scope,
		SealedRecordFields[4]: it.Resource,
		SealedRecordFields[5]: it.Audience,
	}
}

// seal seals token for the record next, whose other fields are final.
func (v *Vendor) seal(ctx context.Context, j *job, next *store.Item, token string) (store.Secret, error) {
	if v.opts.Sealer == nil {
		return store.Secret{Plain: token}, nil
	}
	b, err := v.opts.Sealer.Seal(ctx, []byte(token), v.encryptionContext(j), sealedFields(next))
	if err != nil {
		return store.Secret{}, err
	}
	return store.Secret{Sealed: b}, nil
}

// open returns the record's token. With sealing on, a record whose token is
// not sealed for it (plaintext, or a blob envelope refuses) is errUnsealed;
// a KMS outage is another error.
func (v *Vendor) open(ctx context.Context, j *job, it *store.Item) (string, error) {
	if len(it.Token.Sealed) == 0 {
		if v.opts.Sealer != nil {
			return "", fmt.Errorf("%w: a plaintext token where sealing is on", errUnsealed)
		}
		return it.Token.Plain, nil
	}
	if v.opts.Sealer == nil {
		return "", errors.New("token is sealed but no KMS key is configured")
	}
	b, err := v.opts.Sealer.Open(ctx, it.Token.Sealed, v.encryptionContext(j), sealedFields(it))
	if errors.Is(err, envelope.ErrRefused) {
		return "", fmt.Errorf("%w: %w", errUnsealed, err)
	}
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func sameSecret(a, b store.Secret) bool {
	return a.Plain == b.Plain && string(a.Sealed) == string(b.Sealed)
}

func tokenSHA(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// jitter is a stable per-key fraction of max.
func jitter(pk string, maxJ time.Duration) time.Duration {
	if maxJ <= 0 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(pk))
	return time.Duration(h.Sum32()%1000) * maxJ / 1000
}
