package registry

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

// Source is what Cached wraps.
type Source interface {
	Get(ctx context.Context, name string) (*provider.Definition, error)
	Names(ctx context.Context) ([]string, error)
}

// CacheOptions tune Cached. Zero values take the defaults noted.
type CacheOptions struct {
	// TTL is how long a definition is used before it is read again (300 s,
	// the bound AWS's own Lambda secrets extension uses).
	TTL time.Duration
	// NotFoundTTL caches "no such provider" so unknown names cannot make
	// every request a Secrets Manager call (30 s).
	NotFoundTTL time.Duration
	// MaxNotFound bounds how many "no such provider" answers are kept
	// (1024): names are the caller's to invent, and the unauthenticated
	// JWKS route takes any; past the bound, expired answers go first, then
	// any.
	MaxNotFound int
	// StaleFor is how long past TTL a definition keeps being served while
	// the source fails (15 min).
	StaleFor time.Duration
	Now      func() time.Time
	Logger   *slog.Logger
}

type entry struct {
	def     *provider.Definition
	err     error // cached not-found
	fetched time.Time
}

// Cached is a per-instance cache over a Source, with single-flight on misses
// and stale-if-error.
type Cached struct {
	src  Source
	opts CacheOptions
	mu   sync.Mutex
	defs map[string]entry
	// missing counts the not-found entries in defs.
	missing int
	sf      singleflight.Group

	names        []string
	namesFetched time.Time
}

// NewCached wraps src.
func NewCached(src Source, o CacheOptions) *Cached {
	if o.TTL == 0 {
		o.TTL = 300 * time.Second
	}
	if o.NotFoundTTL == 0 {
		o.NotFoundTTL = 30 * time.Second
	}
	if o.MaxNotFound == 0 {
		o.MaxNotFound = 1024
	}
	if o.StaleFor == 0 {
		o.StaleFor = 15 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Cached{src: src, opts: o, defs: map[string]entry{}}
}

// Get returns the cached definition, reading the source when it is older than TTL.
func (c *Cached) Get(ctx context.Context, name string) (*provider.Definition, error) {
	now := c.opts.Now()
	c.mu.Lock()
	e, ok := c.defs[name]
	c.mu.Unlock()
	if ok {
		ttl := c.opts.TTL
		if e.err != nil {
			ttl = c.opts.NotFoundTTL
		}
		if now.Sub(e.fetched) < ttl {
			return e.def, e.err
		}
	}
	return c.read(ctx, name, true)
}

// Reload reads the source now, bypassing the cache (after the provider
// refused the credentials: the secret may have been rotated). It answers
// with the source's error, never with the cached definition: a caller
// reloads to decide on what the source says now (the refresher retires a
// key whose registration the source no longer has), and a stale answer
// would decide on what it said before.
func (c *Cached) Reload(ctx context.Context, name string) (*provider.Definition, error) {
	return c.read(ctx, name, false)
}

// read reads the source; with stale, a failing source is answered with a
// cached definition up to TTL+StaleFor old.
func (c *Cached) read(ctx context.Context, name string, stale bool) (*provider.Definition, error) {
	key := name
	if !stale {
		key = "\x00reload\x00" + name // never joined to a Get's read, which may answer stale
	}
	v, err, _ := c.sf.Do(key, func() (any, error) {
		d, err := c.src.Get(ctx, name)
		now := c.opts.Now()
		c.mu.Lock()
		defer c.mu.Unlock()
		switch {
		case err == nil:
			c.put(name, entry{def: d, fetched: now})
			return d, nil
		case errors.Is(err, provider.ErrNotFound):
			c.put(name, entry{err: err, fetched: now})
			return nil, err
		}
		if old, ok := c.defs[name]; stale && ok && old.def != nil && now.Sub(old.fetched) < c.opts.TTL+c.opts.StaleFor {
			c.opts.Logger.WarnContext(ctx, "provider source failing; serving the cached definition", "provider", name, "error", err)
			return old.def, nil
		}
		return nil, err
	})
	d, _ := v.(*provider.Definition)
	return d, err
}

// put stores e under name, keeping at most MaxNotFound not-found entries.
// c.mu is held.
func (c *Cached) put(name string, e entry) {
	if old, ok := c.defs[name]; ok && old.err != nil {
		c.missing--
	}
	if e.err != nil {
		if c.missing >= c.opts.MaxNotFound {
			c.evictMissing(e.fetched)
		}
		c.missing++
	}
	c.defs[name] = e
}

// evictMissing makes room for not-found entries: every expired one goes,
// and if that is not enough, an eighth of the others (so a flood of new
// names pays for one sweep per MaxNotFound/8 names, not one per name).
func (c *Cached) evictMissing(now time.Time) {
	for n, e := range c.defs {
		if e.err != nil && now.Sub(e.fetched) >= c.opts.NotFoundTTL {
			delete(c.defs, n)
			c.missing--
		}
	}
	for n, e := range c.defs {
		if c.missing < c.opts.MaxNotFound-c.opts.MaxNotFound/8 {
			break
		}
		if e.err != nil {
			delete(c.defs, n)
			c.missing--
		}
	}
}

// Names lists providers, cached like definitions.
func (c *Cached) Names(ctx context.Context) ([]string, error) {
	now := c.opts.Now()
	c.mu.Lock()
	if c.names != nil && now.Sub(c.namesFetched) < c.opts.TTL {
		n := c.names
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	v, err, _ := c.sf.Do("\x00names", func() (any, error) {
		names, err := c.src.Names(ctx)
		c.mu.Lock()
		defer c.mu.Unlock()
		if err != nil {
			if c.names != nil && now.Sub(c.namesFetched) < c.opts.TTL+c.opts.StaleFor {
				return c.names, nil
			}
			return nil, err
		}
		c.names, c.namesFetched = names, now
		return names, nil
	})
	n, _ := v.([]string)
	return n, err
}
