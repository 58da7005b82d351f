package main

// Faults AWS deals out that a kinder lab would not (issue 11): writes that
// land and fail on the wire, instances frozen mid-flight, revocations under
// a held lease, providers that hang, short-lived tokens, a throttled KMS.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/token-vendor/token-vendor/pkg/envelope"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/tests/faultproxy"
	"github.com/token-vendor/token-vendor/tests/fleet"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// proxied is a world whose instances reach DynamoDB Local through the fault proxy.
type proxied struct {
	*world
	px *faultproxy.Proxy
	st *dynamostore.Store
}

func newProxied(fake bool) (*proxied, error) {
	w, err := newWorld(fake)
	if err != nil {
		return nil, err
	}
	px, err := faultproxy.Start(w.ddb)
	if err != nil {
		w.close()
		return nil, err
	}
	return &proxied{world: w, px: px, st: dynamostore.New(testenv.DynamoDBClient(px.URL), w.table)}, nil
}

func (p *proxied) close() { p.px.Close(); p.world.close() }

// wireWrite: one of a fetch's writes lands in DynamoDB, then the answer is
// lost on the wire (500, or the connection dropped), key after key.
func wireWrite(point string, match func(faultproxy.Request) bool, upFault *sandbox.Fault) func(bool) (row, error) {
	return func(q bool) (row, error) {
		keys := 12
		if q {
			keys = 2
		}
		p, err := newProxied(false)
		if err != nil {
			return row{}, err
		}
		defer p.close()
		const lease = 10 * time.Second
		var vs []*vend.Vendor
		for i := 0; i < 4; i++ {
			vs = append(vs, p.instance(vend.Options{L1MaxAge: -1, DisableRefreshAhead: true, LeaseDuration: lease}, p.st))
		}
		r := row{Fault: "DynamoDB " + point + " applied, then answered 500 or its connection dropped (wire, via the fault proxy)", Runs: keys,
			Expect: "1 upstream request per key, no lease left held, every caller answered well within the 10 s lease"}
		if upFault != nil {
			p.sb.SetFault(*upFault)
			r.Expect = "1 upstream request per key, its refusal recorded for every caller, no lease left held, callers answered well within the 10 s lease"
		}
		injected, stranded := 0, 0
		var worst time.Duration
		for k := 0; k < keys; k++ {
			a := faultproxy.ApplyThen500
			if k%2 == 1 {
				a = faultproxy.DropAfterApply
			}
			rule := p.px.Add(&faultproxy.Rule{Operation: "PutItem", Match: match, Action: a, Times: 1})
			rq := vend.Request{Provider: "demo-k2", Scope: fmt.Sprint("wire", k), MinTTL: -1}
			var s tally
			start := time.Now()
			p.hammer(bg, &s, vs, 5, rq)
			worst = max(worst, time.Since(start))
			injected += p.px.Hits(rule)
			p.px.Clear()
			r.Calls += s.calls
			r.Below += s.below
			if upFault == nil {
				r.Errors += s.errs
				if len(s.tokens) != 1 {
					r.Errors++
				}
			} else {
				r.Refused += s.errs
				r.Errors += s.calls - s.errs
			}
			key := p.defs["demo-k2"].KeyFor([]string{fmt.Sprint("wire", k)})
			if it, err := p.store.Get(bg, key.PK, true); err != nil || it == nil || it.LeaseOwner != "" {
				stranded++
			}
		}
		r.Upstream = p.upstream("demo-k2")
		r.Fault += fmt.Sprintf(" (%d injected)", injected)
		r.Recovery = fmt.Sprintf("slowest round %s; %d leases left held", worst.Round(time.Millisecond), stranded)
		r.Pass = injected == keys && stranded == 0 && r.Errors == 0 && r.Below == 0 && r.Upstream == keys && worst < lease/2
		return r, nil
	}
}

// frozen: the lease holder, a separate OS process, is frozen with SIGSTOP
// mid-fetch or mid-write and resumed after its lease lapsed and another
// process took over (the Kleppmann case). Fencing must hold (the stored
// token is the take-over's) and nobody is refused.
func frozen(midWrite bool) func(bool) (row, error) {
	return func(q bool) (row, error) {
		reps := 3
		if q {
			reps = 1
		}
		where := "mid-fetch (its upstream call in flight)"
		if midWrite {
			where = "mid-write (its token write held in the network past its lease)"
		}
		const lease = 2 * time.Second
		r := row{Fault: "lease holder frozen with SIGSTOP " + where + ", resumed after another process took over", Runs: reps,
			Expect: "2 upstream requests (holder + take-over), no caller refused, the stale holder never overwrites the newer token"}
		r.Pass = true
		var worstResume time.Duration
		for i := 0; i < reps; i++ {
			if err := frozenOnce(&r, midWrite, lease, &worstResume); err != nil {
				return r, err
			}
		}
		r.Recovery = fmt.Sprintf("holder answered ≤ %s after resuming", worstResume.Round(time.Millisecond))
		r.Pass = r.Pass && r.Errors == 0 && r.Below == 0
		return r, nil
	}
}

func frozenOnce(r *row, midWrite bool, lease time.Duration, worstResume *time.Duration) error {
	p, err := newProxied(false)
	if err != nil {
		return err
	}
	defer p.close()
	defs, _ := fleet.WriteDefs("", p.defs)
	defer os.Remove(defs)
	f, err := fleet.Start(3, fleet.Options{Table: p.table, DefsFile: defs, Lease: lease, Endpoint: p.px.URL})
	if err != nil {
		return err
	}
	defer f.Close()
	holder, others := f.Members[0], &fleet.Fleet{Members: f.Members[1:]}
	held := &faultproxy.Rule{Operation: "PutItem", Match: faultproxy.TokenWrite, Action: faultproxy.Hold, Times: 1,
		Release: make(chan struct{}), Arrived: make(chan struct{})}
	if midWrite {
		p.px.Add(held)
	} else {
		p.sb.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Delay: time.Second, Times: 1})
	}
	cmd := fleet.Command{Provider: "demo-k2", Callers: 5, MinTTL: 60, StartUnixMS: time.Now().UnixMilli()}
	if err := holder.Send(cmd); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if midWrite && p.px.Hits(held) > 0 || !midWrite && p.upstream("demo-k2") > 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the holder never got that far")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := holder.Stop(); err != nil {
		return err
	}
	time.Sleep(lease + 300*time.Millisecond)
	cmd.StartUnixMS = time.Now().UnixMilli()
	rep, err := others.Round(cmd)
	if err != nil {
		return err
	}
	close(held.Release) // the late write reaches DynamoDB now, after the take-over's
	time.Sleep(200 * time.Millisecond)
	resumed := time.Now()
	if err := holder.Cont(); err != nil {
		return err
	}
	hrep, err := holder.Read()
	if err != nil {
		return err
	}
	*worstResume = max(*worstResume, time.Since(resumed))
	r.Calls += 5 + 2*5
	r.Errors += len(rep.Errors) + len(hrep.Errors)
	r.Below += rep.BelowMinTTL + hrep.BelowMinTTL
	n := p.upstream("demo-k2")
	r.Upstream += n
	it, err := p.store.Get(bg, p.defs["demo-k2"].KeyFor(nil).PK, true)
	if err != nil || it == nil {
		return fmt.Errorf("record: %v", err)
	}
	stored := fleet.Digest(it.Token.Plain)
	if n != 2 || len(rep.Tokens) != 1 || rep.Tokens[stored] == 0 {
		r.Pass = false // the take-over's token must be the one stored
	}
	return nil
}

// revokeDuringLease: a key is revoked while an instance holds its lease and
// fetches; the pre-revocation holder must not overwrite what came after.
func revokeDuringLease(q bool) (row, error) {
	reps := 5
	if q {
		reps = 2
	}
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	o := vend.Options{L1MaxAge: -1, DisableRefreshAhead: true}
	a, b, admin := w.instance(o, nil), w.instance(o, nil), w.instance(o, nil)
	r := row{Fault: "revoke while another instance holds the lease and fetches", Runs: reps, Recovery: "n/a",
		Expect: "2 upstream requests per round (pre- and post-revocation holder), no errors, the post-revocation token stays stored"}
	r.Pass = true
	for i := 0; i < reps; i++ {
		rq := vend.Request{Provider: "demo-k2", Scope: fmt.Sprint("revoke", i), MinTTL: -1}
		before := w.upstream("demo-k2")
		w.sb.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Delay: 500 * time.Millisecond, Times: 1})
		var sa, sb tally
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); w.hammer(bg, &sa, []*vend.Vendor{a}, 5, rq) }()
		for w.upstream("demo-k2") == before {
			time.Sleep(2 * time.Millisecond)
		}
		if _, err := admin.Revoke(bg, rq); err != nil {
			return r, err
		}
		w.hammer(bg, &sb, []*vend.Vendor{b}, 5, rq)
		wg.Wait()
		r.Calls += sa.calls + sb.calls
		r.Errors += sa.errs + sb.errs
		r.Below += sa.below + sb.below
		it, err := w.store.Get(bg, w.defs["demo-k2"].KeyFor([]string{rq.Scope}).PK, true)
		if err != nil || it == nil {
			return r, fmt.Errorf("record: %v", err)
		}
		if _, fromB := sb.tokens[it.Token.Plain]; !fromB || w.upstream("demo-k2")-before != 2 {
			r.Pass = false
		}
	}
	r.Upstream = w.upstream("demo-k2")
	r.Pass = r.Pass && r.Errors == 0 && r.Below == 0
	return r, nil
}

// hanging: the provider never answers for ten minutes; four instances keep
// asking on a cold key. Timeouts open a growing cooldown, so the provider
// is asked a handful of times, not once per caller.
func hanging(q bool) (row, error) {
	w, err := newWorld(true)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	const attempt = 100 * time.Millisecond
	var vs []*vend.Vendor
	for i := 0; i < 4; i++ {
		vs = append(vs, w.instanceWith(vend.Options{}, nil, attempt))
	}
	dur := 10 * time.Minute
	if q {
		dur = 2 * time.Minute
	}
	w.sb.SetFault(sandbox.Fault{ClientID: "demo-mobi-client", Delay: time.Hour})
	r := row{Fault: fmt.Sprintf("provider hangs past the attempt timeout for %s (cold key, 4 instances × 3 callers each second)", dur)}
	for start := w.now(); w.now().Before(start.Add(dur)); w.clock.Advance(time.Second) {
		var s tally
		w.hammer(bg, &s, vs, 3, req("demo-mobi"))
		r.Runs++
		r.Calls += s.calls
		r.Refused += s.errs
		r.Errors += s.calls - s.errs
		r.Below += s.below
	}
	r.Upstream = w.upstream("demo-mobi")
	limit := upstream.DefaultMaxAttempts * cooldownWindows(dur, 10*time.Second, time.Minute)
	w.sb.ClearFaults()
	if d, ok := w.recovery(vs[0], req("demo-mobi"), 90); ok {
		r.Recovery = fmt.Sprintf("%s after the provider answered again (rest of the cooldown)", d)
	}
	r.Expect = fmt.Sprintf("every caller refused with 503 + Retry-After; ≤ %d upstream requests (%d attempts per cooldown window, windows 10 s doubling to 60 s)", limit, upstream.DefaultMaxAttempts)
	r.Pass = r.Errors == 0 && r.Below == 0 && r.Upstream <= limit && r.Recovery != ""
	return r, nil
}

// cooldownWindows is how many fetches a cooldown that starts at base and
// doubles up to ceiling lets through in dur: one at the start, then one as
// each window ends.
func cooldownWindows(dur, base, ceiling time.Duration) int {
	n, length := 0, base
	for t := time.Duration(0); t < dur; t += length {
		n++
		if n > 1 {
			length = min(2*length, ceiling)
		}
	}
	return n
}

// hungAndHealthy: one refresher run over a hung provider's keys and a
// healthy provider's keys; the hung one must not starve the other.
func hungAndHealthy(q bool) (row, error) {
	keys := 20
	if q {
		keys = 7
	}
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	// A second hung provider: two of them must not hold every slot of the run.
	w.sb.AddClient(sandbox.Client{ID: "hung-2-client", Secret: "hung-2-secret", Style: sandbox.K2, ExpiresIn: 3600})
	h2 := *w.defs["demo-k2"]
	h2.Name, h2.ClientID, h2.ClientSecret = "hung-2", "hung-2-client", "hung-2-secret"
	if err := h2.Validate(); err != nil {
		return row{}, err
	}
	w.defs["hung-2"] = &h2
	v := w.instanceUp(vend.Options{DisableRefreshAhead: true, L1MaxAge: -1, LeaseDuration: time.Second},
		nil, &upstream.Client{AttemptTimeout: 300 * time.Millisecond, MaxAttempts: 1, MaxRetryAfter: -1})
	for k := 0; k < keys; k++ {
		for _, p := range []string{"demo-k2", "hung-2", "demo-mobi"} {
			if _, err := v.Token(bg, vend.Request{Provider: p, Scope: fmt.Sprint("s", k), MinTTL: -1}); err != nil {
				return row{}, err
			}
		}
	}
	before := w.upstream("demo-k2") + w.upstream("hung-2")
	w.sb.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Delay: time.Minute})
	w.sb.SetFault(sandbox.Fault{ClientID: "hung-2-client", Delay: time.Minute})
	ctx, cancel := context.WithTimeout(bg, 3*time.Second) // the function timeout
	defer cancel()
	start := time.Now()
	// The production defaults, under the shards' leases as a scheduled run.
	res, err := v.RefreshDue(ctx, vend.RefreshOptions{Force: true, Exclusive: true})
	if err != nil {
		return row{}, err
	}
	took := time.Since(start)
	deadline, _ := ctx.Deadline()
	hung := w.upstream("demo-k2") + w.upstream("hung-2") - before
	stranded, lost, _, err := w.afterRun(deadline)
	if err != nil {
		return row{}, err
	}
	r := row{Fault: fmt.Sprintf("one scheduled refresher run: %d keys each of two hung providers, %d of a healthy one (3 s function timeout)", keys, keys), Runs: 1,
		Calls: 3 * keys, Upstream: w.upstream("demo-mobi") - keys + hung,
		Recovery: fmt.Sprintf("run ended in %s: %d renewed, %d failed, %d deferred to the next run; %d leases held past the deadline, %d tokens lost", took.Round(time.Millisecond), res.Refreshed, res.Failed, res.Deferred, stranded, lost),
		Expect:   "every healthy key renewed; each hung provider asked at most its 4 concurrent fetches; its keys failed or deferred; the run returns before its deadline; no key or shard lease outlives it; every cached token kept"}
	r.Pass = res.Refreshed == keys && hung <= 2*vend.DefaultProviderFetches && res.Failed+res.Deferred+res.Skipped == 2*keys && took < 3*time.Second &&
		stranded == 0 && lost == 0
	return r, nil
}

// afterRun looks at the table after a refresher run: leases (a key's or a
// shard's) that outlive the run's deadline, cached tokens lost (none may
// be: a cut renewal writes nothing half), and keys with a failure recorded.
func (w *world) afterRun(deadline time.Time) (stranded, lost, failed int, err error) {
	for after := ""; ; {
		page, next, err := w.store.ScanPage(bg, store.Filter{}, after, 1000)
		if err != nil {
			return 0, 0, 0, err
		}
		for _, it := range page {
			if it.LeaseOwner != "" && it.LeaseUntil().After(deadline) {
				stranded++
			}
			if strings.HasPrefix(it.PK, "token#") && (it.Token.IsZero() || !time.Now().Before(it.Expiry())) {
				lost++
			}
			if strings.HasPrefix(it.PK, "token#") && it.LastError != "" {
				failed++
			}
		}
		if after = next; next == "" {
			return stranded, lost, failed, nil
		}
	}
}

// deadlineMidRenewal: a scheduled run whose deadline arrives while every
// renewal waits on a provider slower than the whole run.
func deadlineMidRenewal(q bool) (row, error) {
	keys := 24
	if q {
		keys = 8
	}
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	v := w.instanceUp(vend.Options{DisableRefreshAhead: true, L1MaxAge: -1}, nil, &upstream.Client{AttemptTimeout: 10 * time.Second, MaxAttempts: 1, MaxRetryAfter: -1})
	for k := range keys {
		if _, err := v.Token(bg, vend.Request{Provider: "demo-mobi", Scope: fmt.Sprint("s", k), MinTTL: -1}); err != nil {
			return row{}, err
		}
	}
	before := w.upstream("demo-mobi")
	w.sb.SetFault(sandbox.Fault{ClientID: w.defs["demo-mobi"].ClientID, Delay: time.Minute})
	const timeout = 3 * time.Second
	ctx, cancel := context.WithTimeout(bg, timeout) // the function timeout
	defer cancel()
	deadline, _ := ctx.Deadline()
	start := time.Now()
	res, err := v.RefreshDue(ctx, vend.RefreshOptions{Force: true, Exclusive: true})
	took := time.Since(start)
	if err != nil {
		return row{}, err
	}
	stranded, lost, failed, err := w.afterRun(deadline)
	if err != nil {
		return row{}, err
	}
	cd, _ := w.store.Get(bg, "cooldown#demo-mobi", true)
	cooldown := cd != nil && time.Now().Before(time.UnixMilli(cd.CooldownUntil))
	r := row{Fault: fmt.Sprintf("a scheduled refresher run's deadline (3 s) arrives while all %d renewals wait on a provider answering after 1 min", keys), Runs: 1,
		Upstream: w.upstream("demo-mobi") - before,
		Recovery: fmt.Sprintf("result returned after %s: %d deferred, %d failed; %d leases held past the deadline, %d tokens lost, %d failures recorded, cooldown opened: %v",
			took.Round(time.Millisecond), res.Deferred, res.Failed, stranded, lost, failed, cooldown),
		Expect: "the result returned before the deadline; every renewal deferred (cleanly abandoned), none failed; no key or shard lease outlives the run; every cached token kept; no failure recorded and no cooldown (the provider did not fail)"}
	r.Pass = took < timeout && res.Deferred == keys && res.Failed == 0 && stranded == 0 && lost == 0 && failed == 0 && !cooldown
	return r, nil
}

// shortLived: tokens of 30 s or 60 s, three instances reading every second
// and the refresher every minute, for ten minutes.
func shortLived(lifetime int) func(bool) (row, error) {
	return func(q bool) (row, error) {
		w, err := newWorld(true)
		if err != nil {
			return row{}, err
		}
		defer w.close()
		id := fmt.Sprintf("short-%d", lifetime)
		w.sb.AddClient(sandbox.Client{ID: id, Secret: "short-secret", Style: sandbox.K2, ExpiresIn: lifetime})
		def := *w.defs["demo-k2"]
		def.Name, def.ClientID, def.ClientSecret = id, id, "short-secret"
		w.defs[id] = &def
		o := vend.Options{DisableRefreshAhead: true} // as in Lambda: the refresher renews
		vs := instances(w, 3, o)
		refresher := w.instance(o, nil)
		dur := 10 * time.Minute
		half := time.Duration(lifetime) * time.Second / 2
		rq := vend.Request{Provider: id, MinTTL: half - 5*time.Second}
		r := row{Fault: fmt.Sprintf("%d s tokens, 3 instances reading every second for %s (refresher every minute)", lifetime, dur), Recovery: "n/a"}
		for start := w.now(); w.now().Before(start.Add(dur)); w.clock.Advance(time.Second) {
			if r.Runs%60 == 0 {
				refresher.RefreshDue(bg, vend.RefreshOptions{Horizon: time.Minute})
			}
			var s tally
			w.hammer(bg, &s, vs, 2, rq)
			r.Runs++
			r.Calls += s.calls
			r.Errors += s.errs
			r.Below += s.below
		}
		r.Upstream = w.upstream(id)
		limit := int(dur/half) + 1
		r.Expect = fmt.Sprintf("≤ %d upstream requests (duration / (lifetime/2) + 1), no errors, none below min_ttl %s", limit, rq.MinTTL)
		r.Pass = r.Errors == 0 && r.Below == 0 && r.Upstream <= limit
		return r, nil
	}
}

// kmsThrottled: KMS Decrypt is throttled (on the wire, via the proxy in
// front of moto) while instances with cold data-key caches read a cached
// token: callers get a token or 503, and the provider sees no stampede.
func kmsThrottled(q bool) (row, error) {
	moto, err := testenv.MotoEndpoint()
	if err != nil {
		return row{}, err
	}
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	px, err := faultproxy.Start(moto)
	if err != nil {
		return row{}, err
	}
	defer px.Close()
	mk := func(ep string) *kms.Client {
		return kms.NewFromConfig(testenv.Config(), func(o *kms.Options) {
			o.BaseEndpoint = aws.String(ep)
			o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) { so.MaxAttempts = 2; so.MaxBackoff = 50 * time.Millisecond })
		})
	}
	key, err := mk(moto).CreateKey(bg, &kms.CreateKeyInput{KeySpec: kmstypes.KeySpecSymmetricDefault, KeyUsage: kmstypes.KeyUsageTypeEncryptDecrypt})
	if err != nil {
		return row{}, err
	}
	const burst, rate = 2, 1.0
	o := vend.Options{L1MaxAge: -1, DisableRefreshAhead: true, FallbackBurst: burst, FallbackRate: rate, StoreRetryAfter: 500 * time.Millisecond}
	sealed := func() vend.Options {
		o := o
		o.Sealer = envelope.New(mk(px.URL), aws.ToString(key.KeyMetadata.KeyId)) // its own data-key cache, as a new instance has
		return o
	}
	if _, err := w.instance(sealed(), nil).Token(bg, req("demo-k2")); err != nil {
		return row{}, err
	}
	rule := px.Add(&faultproxy.Rule{Operation: "Decrypt", Action: faultproxy.Throttle})
	var vs []*vend.Vendor
	for i := 0; i < 4; i++ {
		vs = append(vs, w.instance(sealed(), nil))
	}
	rounds := 20
	if q {
		rounds = 5
	}
	r := row{Fault: "KMS Decrypt throttled on the wire (4 new instances, cached token sealed)", Runs: rounds}
	start := time.Now()
	for i := 0; i < rounds; i++ {
		var s tally
		w.hammer(bg, &s, vs, 5, req("demo-k2"))
		r.Calls += s.calls
		r.Refused += s.errs
		r.Below += s.below
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(start)
	r.Upstream = w.upstream("demo-k2") - 1
	limit := len(vs) * (burst + int(rate*elapsed.Seconds()) + 1)
	throttled := px.Hits(rule)
	px.Clear()
	back := time.Now()
	for time.Since(back) < 10*time.Second {
		if tok, err := vs[0].Token(bg, req("demo-k2")); err == nil && tok.Source == vend.FromL2 {
			r.Recovery = fmt.Sprintf("%s from KMS back to tokens read from the table", time.Since(back).Round(time.Millisecond))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.Fault += fmt.Sprintf(" (%d Decrypt calls throttled)", throttled)
	r.Expect = fmt.Sprintf("a token or 503 to every caller; ≤ %d upstream requests in %s (fallback limit %d/s, burst %d, per instance)", limit, elapsed.Round(time.Millisecond), int(rate), burst)
	r.Pass = r.Below == 0 && r.Upstream <= limit && throttled > 0 && r.Recovery != ""
	return r, nil
}
