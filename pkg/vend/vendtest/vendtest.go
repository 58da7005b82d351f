// Package vendtest has the fixtures vending tests share: a fake clock, a
// provider source that can rotate secrets, and a sandbox upstream.
package vendtest

import (
	"context"
	"fmt"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/upstream"
)

// Clock is a settable clock. Sleep advances it, so code that waits on a
// lease or a cooldown runs at once in tests.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock starts a year ahead of the wall clock, on the hour. Never in the
// past: DynamoDB Local runs TTL on the wall clock, and would delete records
// whose fake expiry it finds past (a fixed start date became such a time
// bomb once the real date passed it).
func NewClock() *Clock { return &Clock{now: time.Now().UTC().AddDate(1, 0, 0).Truncate(time.Hour)} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Sleep advances the clock by d and yields to other goroutines.
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.Advance(d)
	runtime.Gosched()
	time.Sleep(time.Millisecond)
	return ctx.Err()
}

// Providers is an in-memory provider source whose definitions can be
// replaced, counting reloads.
type Providers struct {
	mu      sync.Mutex
	defs    map[string]*provider.Definition
	Reloads int
}

// NewProviders copies defs.
func NewProviders(defs map[string]*provider.Definition) *Providers {
	p := &Providers{defs: map[string]*provider.Definition{}}
	for k, v := range defs {
		p.defs[k] = v
	}
	return p
}

// Get returns the definition.
func (p *Providers) Get(_ context.Context, name string) (*provider.Definition, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.defs[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", provider.ErrNotFound, name)
	}
	return d, nil
}

// Reload counts and returns the definition.
func (p *Providers) Reload(ctx context.Context, name string) (*provider.Definition, error) {
	p.mu.Lock()
	p.Reloads++
	p.mu.Unlock()
	return p.Get(ctx, name)
}

// Set replaces a definition (a rotation in Secrets Manager).
func (p *Providers) Set(d *provider.Definition) {
	if err := d.Validate(); err != nil {
		panic(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.defs[d.Name] = d
}

// Delete removes a definition.
func (p *Providers) Delete(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.defs, name)
}

// Upstream is a sandbox authorization server with the demo providers.
type Upstream struct {
	Server *sandbox.Server
	URL    string
	Defs   map[string]*provider.Definition
}

// NewUpstream starts a sandbox for the test's lifetime.
func NewUpstream(t testing.TB) *Upstream {
	s := sandbox.New()
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return &Upstream{Server: s, URL: srv.URL, Defs: sandbox.DemoProviders(s, srv.URL)}
}

// Client returns an upstream client on clock with fast retries.
func Client(clock *Clock) *upstream.Client {
	c := &upstream.Client{BaseBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, AttemptTimeout: 2 * time.Second, MaxRetryAfter: -1}
	if clock != nil {
		c.Now = clock.Now
	}
	return c
}
