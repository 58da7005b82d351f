package main

import (
	"context"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// world is one scenario's parts: a sandbox upstream, a fresh DynamoDB Local
// table, and vendor instances on it.
type world struct {
	sb    *sandbox.Server
	srv   *httptest.Server
	defs  map[string]*provider.Definition
	ddb   string
	table string
	store *dynamostore.Store
	clock *vendtest.Clock // nil: wall clock
}

func newWorld(fake bool) (*world, error) {
	ddb, err := testenv.DynamoDBEndpoint()
	if err != nil {
		return nil, err
	}
	w := &world{sb: sandbox.New(), ddb: ddb, table: "rel-" + testenv.RandomSuffix()}
	w.srv = httptest.NewServer(w.sb.Handler())
	w.defs = sandbox.DemoProviders(w.sb, w.srv.URL)
	if err := dynamostore.CreateTable(context.Background(), testenv.DynamoDBClient(ddb), w.table); err != nil {
		return nil, err
	}
	w.store = dynamostore.New(testenv.DynamoDBClient(ddb), w.table)
	if fake {
		w.clock = vendtest.NewClock()
	}
	return w, nil
}

func (w *world) close() { w.srv.Close() }

func (w *world) now() time.Time {
	if w.clock != nil {
		return w.clock.Now()
	}
	return time.Now()
}

// instance is one vendor instance (own L1, own single-flight) on the world.
func (w *world) instance(o vend.Options, st vend.Store) *vend.Vendor {
	return w.instanceWith(o, st, 2*time.Second)
}

// instanceWith is instance with an upstream attempt timeout; the lease is
// sized from it as in production (3 attempts + margin).
func (w *world) instanceWith(o vend.Options, st vend.Store, attempt time.Duration) *vend.Vendor {
	return w.instanceUp(o, st, &upstream.Client{AttemptTimeout: attempt, MaxRetryAfter: -1, BaseBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
}

// instanceUp is instance with its own upstream client.
func (w *world) instanceUp(o vend.Options, st vend.Store, up *upstream.Client) *vend.Vendor {
	attempts := up.MaxAttempts
	if attempts == 0 {
		attempts = upstream.DefaultMaxAttempts
	}
	if o.LeaseDuration == 0 {
		o.LeaseDuration = time.Duration(attempts)*up.AttemptTimeout + time.Second
	}
	if w.clock != nil {
		// Waits are real (and short): a wait must not move the shared fake
		// clock, or one waiting caller would age every other caller's token.
		up.Now = w.clock.Now
		o.Now = w.clock.Now
		o.Sleep = func(ctx context.Context, d time.Duration) error {
			time.Sleep(min(d, 2*time.Millisecond))
			return ctx.Err()
		}
	}
	if st == nil {
		st = w.store
	}
	return vend.New(registry.NewStatic(w.defs), up, st, o)
}

func (w *world) upstream(provider string) int { return w.sb.Requests(w.defs[provider].ClientID) }

// tally counts what callers saw.
type tally struct {
	mu     sync.Mutex
	calls  int
	errs   int
	below  int
	tokens map[string]int
	first  error // the first error seen, for the report
}

// hammer has callers on every instance ask at once and tallies the outcome
// against minTTL, judged by the world's clock.
func (w *world) hammer(ctx context.Context, t *tally, instances []*vend.Vendor, callers int, req vend.Request) {
	var wg sync.WaitGroup
	for _, v := range instances {
		for i := 0; i < callers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := v.Token(ctx, req)
				t.add(tok, err, w.now(), req.MinTTL)
			}()
		}
	}
	wg.Wait()
}

func (t *tally) add(tok vend.Token, err error, now time.Time, minTTL time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tokens == nil {
		t.tokens = map[string]int{}
	}
	t.calls++
	if err != nil {
		t.errs++
		if t.first == nil {
			t.first = err
		}
		return
	}
	if minTTL < 0 {
		minTTL = 60 * time.Second
	}
	if tok.ExpiresAt.Sub(now) < minTTL {
		t.below++
	}
	t.tokens[tok.AccessToken]++
}

// recovery advances the fake clock a second at a time until v vends again,
// for at most steps seconds, and says how long that took.
func (w *world) recovery(v *vend.Vendor, r vend.Request, steps int) (time.Duration, bool) {
	from := w.now()
	for i := 0; i < steps; i++ {
		w.clock.Advance(time.Second)
		if _, err := v.Token(bg, r); err == nil {
			return w.now().Sub(from), true
		}
	}
	return 0, false
}
