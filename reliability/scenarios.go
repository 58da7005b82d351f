package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"

	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/tests/fleet"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// row is one fault and what callers saw.
type row struct {
	Fault    string
	Runs     int // rounds, repetitions or simulated steps
	Calls    int // vend calls made
	Errors   int // calls that failed where the contract says none may
	Refused  int // calls refused as documented (503 + Retry-After) because no token could exist
	Below    int // tokens vended with less than min_ttl left (must be 0)
	Upstream int // token requests the provider saw
	Recovery string
	Expect   string
	Pass     bool
}

var bg = context.Background()

func req(p string) vend.Request { return vend.Request{Provider: p, MinTTL: -1} }

func instances(w *world, n int, o vend.Options) []*vend.Vendor {
	out := make([]*vend.Vendor, n)
	for i := range out {
		out[i] = w.instance(o, nil)
	}
	return out
}

// stampede: separate processes ask at once on a cold key, round after round.
func stampede(q bool) (row, error) {
	rounds, procs, callers := 100, 8, 50
	if q {
		rounds, procs, callers = 5, 4, 20
	}
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	defs, _ := fleet.WriteDefs("", w.defs)
	defer os.Remove(defs)
	f, err := fleet.Start(procs, fleet.Options{Table: w.table, DefsFile: defs})
	if err != nil {
		return row{}, err
	}
	defer f.Close()
	r := row{Fault: fmt.Sprintf("fleet stampede (%d processes × %d callers, cold key each round)", procs, callers), Runs: rounds, Expect: "1 upstream request per round, no errors"}
	badRounds := 0
	for i := 1; i <= rounds; i++ {
		before := w.upstream("demo-k2")
		rep, err := f.Round(fleet.Command{Provider: "demo-k2", Callers: callers, MinTTL: 60, OffsetS: int64(i) * 7200})
		if err != nil {
			return r, err
		}
		r.Calls += procs * callers
		r.Errors += len(rep.Errors)
		r.Below += rep.BelowMinTTL
		if w.upstream("demo-k2")-before != 1 || len(rep.Tokens) != 1 {
			badRounds++
		}
	}
	r.Upstream = w.upstream("demo-k2")
	r.Recovery = "n/a"
	r.Pass = badRounds == 0 && r.Errors == 0 && r.Below == 0 && r.Upstream == rounds
	return r, nil
}

// sigkill: the lease holder dies mid-fetch.
func sigkill(q bool) (row, error) {
	reps := 3
	if q {
		reps = 1
	}
	r := row{Fault: "lease holder SIGKILLed during its upstream call", Runs: reps, Expect: "others served within lease + 1 s, exactly 1 more upstream request"}
	const lease = 2 * time.Second
	var worst int64
	r.Pass = true
	for i := 0; i < reps; i++ {
		w, err := newWorld(false)
		if err != nil {
			return r, err
		}
		defs, _ := fleet.WriteDefs("", w.defs)
		f, err := fleet.Start(3, fleet.Options{Table: w.table, DefsFile: defs, Lease: lease})
		if err != nil {
			return r, err
		}
		w.sb.SetFault(sandbox.Fault{ClientID: "demo-k2-client", Delay: time.Minute, Times: 1})
		f.Members[0].Send(fleet.Command{Provider: "demo-k2", Callers: 5, StartUnixMS: time.Now().UnixMilli()})
		for deadline := time.Now().Add(10 * time.Second); w.upstream("demo-k2") < 1 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		f.Members[0].Kill()
		rep, err := f.Round(fleet.Command{Provider: "demo-k2", Callers: 20, MinTTL: 60, StartUnixMS: time.Now().UnixMilli()})
		if err != nil {
			return r, err
		}
		r.Calls += 40
		r.Errors += len(rep.Errors)
		r.Below += rep.BelowMinTTL
		r.Upstream += w.upstream("demo-k2")
		worst = max(worst, rep.MaxWaitMS)
		if w.upstream("demo-k2") != 2 || rep.MaxWaitMS > (lease+time.Second).Milliseconds() {
			r.Pass = false
		}
		f.Close()
		os.Remove(defs)
		w.close()
	}
	r.Recovery = fmt.Sprintf("≤ %d ms (lease %s)", worst, lease)
	r.Pass = r.Pass && r.Errors == 0 && r.Below == 0
	return r, nil
}

// providerDown: the provider fails for hours while a token is cached (fake clock).
func providerDown(q bool) (row, error) {
	w, err := newWorld(true)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	vs := instances(w, 3, vend.Options{})
	r := row{Fault: "provider down for hours (503 on every request), token cached", Expect: "no errors while the cached token has ≥ min_ttl; then 503 + Retry-After; none below min_ttl"}
	var t tally
	w.hammer(bg, &t, vs, 5, req("demo-k2"))
	first := w.now()
	w.sb.SetFault(sandbox.Fault{Status: 503})
	step := 10 * time.Second
	for w.now().Before(first.Add(2 * time.Hour)) {
		w.clock.Advance(step)
		r.Runs++
		left := first.Add(time.Hour).Sub(w.now())
		var s tally
		w.hammer(bg, &s, vs, 5, req("demo-k2"))
		if left >= 60*time.Second {
			r.Errors += s.errs
		} else {
			r.Refused += s.errs
			r.Errors += s.calls - s.errs // nothing may be vended below min_ttl
		}
		r.Calls += s.calls
		r.Below += s.below
	}
	w.sb.ClearFaults()
	if d, ok := w.recovery(vs[0], req("demo-k2"), 180); ok {
		r.Recovery = fmt.Sprintf("%s after the provider returned (cooldown)", d)
	}
	r.Upstream = w.upstream("demo-k2")
	r.Pass = r.Errors == 0 && r.Below == 0 && r.Refused > 0 && r.Recovery != ""
	return r, nil
}

// retryAfterStorm: every request is answered status with Retry-After (429,
// or a 503 on the first attempt); the fleet must back off together.
func retryAfterStorm(status int) func(bool) (row, error) {
	return func(q bool) (row, error) { return storm(q, status) }
}

func storm(q bool, status int) (row, error) {
	w, err := newWorld(true)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	vs := instances(w, 4, vend.Options{})
	w.sb.SetFault(sandbox.Fault{Status: status, RetryAfter: 30})
	r := row{Fault: fmt.Sprintf("%d storm with Retry-After: 30 on every answer, the first included (cold key, 4 instances)", status), Expect: "provider asked at most once per Retry-After window, fleet-wide"}
	const window = 30 * time.Second
	dur := 10 * time.Minute
	for start := w.now(); w.now().Before(start.Add(dur)); w.clock.Advance(time.Second) {
		var s tally
		w.hammer(bg, &s, vs, 3, req("demo-k2"))
		r.Runs++
		r.Calls += s.calls
		r.Refused += s.errs
		r.Below += s.below
	}
	r.Upstream = w.upstream("demo-k2")
	limit := int(dur/window) + 1
	w.sb.ClearFaults()
	if d, ok := w.recovery(vs[0], req("demo-k2"), 60); ok {
		r.Recovery = fmt.Sprintf("%s after the storm (rest of the cooldown)", d)
	}
	r.Expect += fmt.Sprintf(" (≤ %d in %s)", limit, dur)
	r.Pass = r.Upstream <= limit && r.Below == 0 && r.Recovery != ""
	return r, nil
}

// flapping: the provider fails half of the time for a simulated day.
func flapping(q bool) (row, error) {
	w, err := newWorld(true)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	vs := instances(w, 3, vend.Options{DisableRefreshAhead: true})
	refresher := w.instance(vend.Options{}, nil)
	r := row{Fault: "5xx flapping (each minute the provider is up or down at random) for a day", Expect: "no errors, none below min_ttl"}
	rng := rand.New(rand.NewPCG(1, 2))
	hours := 24
	if q {
		hours = 4
	}
	var firstErr error
	start := w.now()
	for ; w.now().Before(start.Add(time.Duration(hours) * time.Hour)); w.clock.Advance(time.Minute) {
		w.sb.ClearFaults()
		if r.Runs > 0 && rng.IntN(2) == 0 {
			w.sb.SetFault(sandbox.Fault{Status: 503})
		}
		refresher.RefreshDue(bg, vend.RefreshOptions{Horizon: time.Minute})
		var s tally
		w.hammer(bg, &s, vs, 2, req("demo-k2"))
		r.Runs++
		r.Calls += s.calls
		r.Errors += s.errs
		r.Below += s.below
		if s.first != nil && firstErr == nil {
			firstErr = fmt.Errorf("at %s: %w", w.now().Sub(start), s.first)
		}
	}
	r.Upstream = w.upstream("demo-k2")
	r.Recovery = "n/a (never unavailable)"
	if firstErr != nil {
		r.Recovery = "first error " + firstErr.Error()
	}
	r.Pass = r.Errors == 0 && r.Below == 0
	return r, nil
}

// slow: the provider answers just inside the timeout, then just outside.
func slow(q bool) ([]row, error) {
	w, err := newWorld(false)
	if err != nil {
		return nil, err
	}
	defer w.close()
	const timeout = 400 * time.Millisecond
	var vs []*vend.Vendor
	for i := 0; i < 4; i++ {
		vs = append(vs, w.instanceWith(vend.Options{}, nil, timeout))
	}
	w.sb.SetFault(sandbox.Fault{Delay: timeout * 85 / 100})
	var s tally
	w.hammer(bg, &s, vs, 20, req("demo-dot"))
	near := row{Fault: "slow provider at 85% of the attempt timeout", Runs: 1, Calls: s.calls, Errors: s.errs, Below: s.below, Upstream: w.upstream("demo-dot"),
		Recovery: "n/a", Expect: "1 upstream request, no errors"}
	near.Pass = near.Upstream == 1 && near.Errors == 0 && near.Below == 0
	w.sb.ClearFaults()
	w.sb.SetFault(sandbox.Fault{Delay: timeout * 120 / 100})
	var s2 tally
	before := w.upstream("demo-mobi")
	w.hammer(bg, &s2, vs, 10, req("demo-mobi"))
	over := row{Fault: "slow provider at 120% of the attempt timeout (cold key)", Runs: 1, Calls: s2.calls, Refused: s2.errs, Below: s2.below, Upstream: w.upstream("demo-mobi") - before,
		Expect: "503 + Retry-After to callers, upstream attempts ≤ 3 per lease, recovery within the timeout cooldown (10 s)"}
	w.sb.ClearFaults()
	start := time.Now()
	for i := 0; i < 300; i++ { // timeouts open a 10 s cooldown
		var s3 tally
		w.hammer(bg, &s3, vs[:1], 1, req("demo-mobi"))
		if s3.errs == 0 {
			over.Recovery = fmt.Sprintf("%s after the provider sped up", time.Since(start).Round(time.Millisecond))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	over.Pass = over.Refused == over.Calls && over.Upstream <= 3*4 && over.Recovery != ""
	return []row{near, over}, nil
}

// ddbOutage: DynamoDB stopped mid-run, then restarted.
func ddbOutage(q bool) (row, error) {
	dir := os.Getenv(testenv.EnvDDBDir)
	port, err := testenv.FreePort()
	if err != nil {
		return row{}, err
	}
	ddb, err := testenv.StartDynamoDBLocalOn(dir, port)
	if err != nil {
		return row{}, err
	}
	defer ddb.Stop()
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	if err := dynamostore.CreateTable(bg, testenv.DynamoDBClient(ddb.Endpoint), w.table); err != nil {
		return row{}, err
	}
	st := dynamostore.New(testenv.DynamoDBClient(ddb.Endpoint), w.table)
	const burst, rate = 3, 2
	var vs []*vend.Vendor
	for i := 0; i < 2; i++ {
		vs = append(vs, w.instance(vend.Options{L1MaxAge: 100 * time.Millisecond, FallbackBurst: burst, FallbackRate: rate, DisableRefreshAhead: true, StoreRetryAfter: time.Second}, st))
	}
	r := row{Fault: "DynamoDB stopped mid-run, then restarted (2 instances)", Expect: fmt.Sprintf("cached keys keep vending; uncached keys rate-limited to %d/s (burst %d) per instance", rate, burst)}
	var warm tally
	w.hammer(bg, &warm, vs, 3, req("demo-dot"))
	before := w.upstream("demo-k2")
	ddb.Stop()
	// The first call after the stop pays the SDK's retries against the dead
	// endpoint and opens the instance's store breaker; the window starts then.
	time.Sleep(150 * time.Millisecond) // past L1_MAX_AGE, so the next calls go to the store
	tripStart := time.Now()
	var trip tally
	w.hammer(bg, &trip, vs, 1, req("demo-dot"))
	tripped := time.Since(tripStart)
	r.Calls += trip.calls
	r.Errors += trip.errs
	start := time.Now()
	dur := 3 * time.Second
	if q {
		dur = 1500 * time.Millisecond
	}
	for i := 0; time.Since(start) < dur; i++ {
		var s tally
		w.hammer(bg, &s, vs, 2, req("demo-dot"))
		r.Errors += s.errs
		r.Calls += s.calls
		r.Below += s.below
		var u tally
		w.hammer(bg, &u, vs, 1, vend.Request{Provider: "demo-k2", Scope: fmt.Sprint("k", i), MinTTL: -1})
		r.Calls += u.calls
		r.Refused += u.errs
		r.Runs++
	}
	outage := time.Since(start)
	r.Upstream = w.upstream("demo-k2") - before
	limit := 2 * (burst + int(rate*outage.Seconds()) + 1)
	ddb2, err := testenv.StartDynamoDBLocalOn(dir, port)
	if err != nil {
		return r, err
	}
	defer ddb2.Stop()
	restarted := time.Now()
	if err := dynamostore.CreateTable(bg, testenv.DynamoDBClient(ddb2.Endpoint), w.table); err != nil {
		return r, err
	}
	for time.Since(restarted) < 30*time.Second {
		if _, err := vs[0].Token(bg, req("demo-mobi")); err == nil {
			if it, err := st.Get(bg, w.defs["demo-mobi"].KeyFor(nil).PK, true); err == nil && it != nil {
				r.Recovery = fmt.Sprintf("%s from restart to tokens stored again", time.Since(restarted).Round(time.Millisecond))
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.Expect += fmt.Sprintf(" (≤ %d upstream in %s); first call after the stop took %s (SDK retries), later ones skip the store", limit, outage.Round(time.Millisecond), tripped.Round(time.Millisecond))
	r.Pass = r.Errors == 0 && r.Below == 0 && r.Upstream <= limit && r.Recovery != ""
	return r, nil
}

// faultInjector fails DynamoDB calls through SDK middleware: the first
// attempt of every third GetItem is throttled (the SDK retries it), and every
// third PutItem reports a timeout after the write was applied, so its
// outcome is unknown to the caller.
type faultInjector struct {
	gets, puts        atomic.Int64
	throttled, landed atomic.Int64
}

type injectKey struct{}

type injectState struct {
	throttle, timeout bool
	attempts          int
}

func (fi *faultInjector) apply(o *dynamodb.Options) {
	o.APIOptions = append(o.APIOptions, func(stack *middleware.Stack) error {
		if err := stack.Initialize.Add(middleware.InitializeMiddlewareFunc("inject-plan", func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			st := &injectState{}
			switch in.Parameters.(type) {
			case *dynamodb.GetItemInput:
				st.throttle = fi.gets.Add(1)%3 == 0
			case *dynamodb.PutItemInput:
				st.timeout = fi.puts.Add(1)%3 == 0
			}
			return next.HandleInitialize(context.WithValue(ctx, injectKey{}, st), in)
		}), middleware.Before); err != nil {
			return err
		}
		return stack.Deserialize.Add(middleware.DeserializeMiddlewareFunc("inject-fault", func(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (middleware.DeserializeOutput, middleware.Metadata, error) {
			st, _ := ctx.Value(injectKey{}).(*injectState)
			if st != nil && st.throttle && st.attempts == 0 {
				st.attempts++
				fi.throttled.Add(1)
				return middleware.DeserializeOutput{}, middleware.Metadata{}, &smithy.GenericAPIError{Code: "ThrottlingException", Message: "injected"}
			}
			out, md, err := next.HandleDeserialize(ctx, in)
			if st != nil && st.timeout && err == nil {
				st.timeout = false
				fi.landed.Add(1)
				return out, md, errors.New("injected: timed out after the write was applied")
			}
			return out, md, err
		}), middleware.After)
	})
}

func ddbInjected(q bool) (row, error) {
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	fi := &faultInjector{}
	client := dynamodb.NewFromConfig(testenv.Config(), func(o *dynamodb.Options) {
		o.BaseEndpoint = aws.String(w.ddb)
		o.DisableValidateResponseChecksum = true
		fi.apply(o)
	})
	st := dynamostore.New(client, w.table)
	var vs []*vend.Vendor
	for i := 0; i < 4; i++ {
		vs = append(vs, w.instance(vend.Options{L1MaxAge: -1, DisableRefreshAhead: true}, st))
	}
	keys := 30
	if q {
		keys = 8
	}
	r := row{Fault: "DynamoDB throttling and conditional-write timeouts injected through SDK middleware", Runs: keys, Recovery: "n/a",
		Expect: "1 upstream request per key, no errors (writes with unknown outcome are read back)"}
	for k := 0; k < keys; k++ {
		var s tally
		w.hammer(bg, &s, vs, 5, vend.Request{Provider: "demo-k2", Scope: fmt.Sprint("key", k), MinTTL: -1})
		r.Calls += s.calls
		r.Errors += s.errs
		r.Below += s.below
		if len(s.tokens) != 1 {
			r.Errors++
		}
	}
	r.Upstream = w.upstream("demo-k2")
	r.Fault += fmt.Sprintf(" (%d throttles, %d writes reported failed after landing)", fi.throttled.Load(), fi.landed.Load())
	r.Pass = r.Errors == 0 && r.Below == 0 && r.Upstream == keys && fi.landed.Load() > 0 && fi.throttled.Load() > 0
	return r, nil
}

// rejectedStorm: many callers on many instances report the same rejected token.
func rejectedStorm(q bool) (row, error) {
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	vs := instances(w, 4, vend.Options{})
	first, err := vs[0].Token(bg, req("demo-k2"))
	if err != nil {
		return row{}, err
	}
	sha := sha256hex(first.AccessToken)
	r := row{Fault: "revoked token reported as rejected by 100 callers on 4 instances at once", Runs: 1, Recovery: "n/a", Expect: "exactly 1 new upstream request; everyone gets the same new token"}
	var t tally
	var wg sync.WaitGroup
	for _, v := range vs {
		for i := 0; i < 25; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := v.Rejected(bg, req("demo-k2"), sha)
				t.add(tok, err, time.Now(), 60*time.Second)
			}()
		}
	}
	wg.Wait()
	r.Calls, r.Errors, r.Below = t.calls, t.errs, t.below
	r.Upstream = w.upstream("demo-k2")
	_, stillOld := t.tokens[first.AccessToken]
	r.Pass = r.Upstream == 2 && r.Errors == 0 && len(t.tokens) == 1 && !stillOld
	return r, nil
}

// clockSkew: three processes whose clocks are −5 s, 0 and +5 s apart.
func clockSkew(q bool) (row, error) {
	rounds := 20
	if q {
		rounds = 4
	}
	w, err := newWorld(false)
	if err != nil {
		return row{}, err
	}
	defer w.close()
	defs, _ := fleet.WriteDefs("", w.defs)
	defer os.Remove(defs)
	f, err := fleet.Start(3, fleet.Options{Table: w.table, DefsFile: defs})
	if err != nil {
		return row{}, err
	}
	defer f.Close()
	skew := []int64{-5, 0, 5}
	r := row{Fault: "clock skew of ±5 s between 3 instances (cold keys and tokens near min_ttl)", Runs: rounds, Recovery: "n/a",
		Expect: "no token below min_ttl by any instance's own clock; ≤ 2 upstream requests per round"}
	bad := 0
	for i := 1; i <= rounds; i++ {
		base := int64(i) * 7200
		before := w.upstream("demo-k2")
		rep, err := f.RoundEach(func(m int) fleet.Command {
			return fleet.Command{Provider: "demo-k2", Callers: 10, MinTTL: 60, OffsetS: base + skew[m]}
		})
		if err != nil {
			return r, err
		}
		// The token issued this round has 3600 s; move to 62 s before its
		// expiry by the middle clock: the +5 s instance sees 57 s left.
		rep2, err := f.RoundEach(func(m int) fleet.Command {
			return fleet.Command{Provider: "demo-k2", Callers: 10, MinTTL: 60, OffsetS: base + 3600 - 62 + skew[m]}
		})
		if err != nil {
			return r, err
		}
		r.Calls += 60
		r.Errors += len(rep.Errors) + len(rep2.Errors)
		r.Below += rep.BelowMinTTL + rep2.BelowMinTTL
		if w.upstream("demo-k2")-before > 2 {
			bad++
		}
	}
	r.Upstream = w.upstream("demo-k2")
	r.Pass = r.Errors == 0 && r.Below == 0 && bad == 0
	return r, nil
}

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
