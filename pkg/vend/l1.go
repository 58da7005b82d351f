package vend

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

// l1Cache is the in-process cache in front of the store. It is keyed by the
// caller's raw scope string, so a hit needs no parsing: an entry only exists
// for a scope string that was already validated against the same definition
// (compared by pointer, so a reloaded definition misses and revalidates).
type l1Cache struct {
	mu    sync.RWMutex
	byReq map[string]map[string]*l1Entry   // provider -> raw scope -> entry
	byPK  map[string]map[*l1Entry]struct{} // a set: one key's entries are many spellings, removed in O(1)
	n     int                              // entries in byReq
}

type l1Entry struct {
	def      *provider.Definition
	pk       string
	rawScope string
	tok      Token
	lifetime time.Duration
	stored   time.Time
	sha      string
}

// l1MaxEntries bounds the entries of all providers together (a few KB
// each at most: 8192 stay within tens of MB). L1 is keyed by the request as
// written, and one request has endless spellings (spaces, repeats, order),
// so only a bound keeps one allowed caller from filling a warm instance's
// memory; real use needs a few spellings per key.
const l1MaxEntries = 8192

func newL1() *l1Cache {
	return &l1Cache{byReq: map[string]map[string]*l1Entry{}, byPK: map[string]map[*l1Entry]struct{}{}}
}

// effectiveMinTTL caps min_ttl at half the token's lifetime: a caller asking
// for more than a provider ever grants would otherwise force a fetch per call.
func effectiveMinTTL(minTTL, lifetime time.Duration) time.Duration {
	if half := lifetime / 2; minTTL > half {
		return half
	}
	return minTTL
}

func (c *l1Cache) get(def *provider.Definition, rawScope string, now time.Time, minTTL, maxAge time.Duration) (Token, bool) {
	c.mu.RLock()
	e := c.byReq[def.Name][rawScope]
	c.mu.RUnlock()
	if e == nil || e.def != def || now.Sub(e.stored) >= maxAge || e.tok.ExpiresAt.Sub(now) < effectiveMinTTL(minTTL, e.lifetime) || !now.Before(e.tok.ExpiresAt) {
		return Token{}, false
	}
	t := e.tok
	t.Source = FromL1
	return t, true
}

// stale returns an entry for pk regardless of its age: used only while the
// store is unavailable, when there is no fresher truth to prefer.
func (c *l1Cache) stale(pk string, now time.Time, minTTL time.Duration) (Token, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for e := range c.byPK[pk] {
		if e.tok.ExpiresAt.Sub(now) >= effectiveMinTTL(minTTL, e.lifetime) && now.Before(e.tok.ExpiresAt) {
			t := e.tok
			t.Source = FromL1
			return t, true
		}
	}
	return Token{}, false
}

func (c *l1Cache) put(def *provider.Definition, rawScope, pk string, t Token, now time.Time) {
	lifetime := t.lifetime
	if lifetime <= 0 {
		// Unknown: what is left is a lower bound, which only makes the
		// half-lifetime cap stricter.
		lifetime = t.ExpiresAt.Sub(now)
	}
	sum := sha256.Sum256([]byte(t.AccessToken))
	e := &l1Entry{def: def, pk: pk, rawScope: rawScope, tok: t, lifetime: lifetime, stored: now, sha: hex.EncodeToString(sum[:])}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.byReq[def.Name]
	if m == nil {
		m = map[string]*l1Entry{}
		c.byReq[def.Name] = m
	}
	if old := m[rawScope]; old != nil {
		c.unindex(old)
	} else {
		if c.n >= l1MaxEntries {
			c.evictOne(m)
		}
		c.n++
	}
	m[rawScope] = e
	set := c.byPK[pk]
	if set == nil {
		set = map[*l1Entry]struct{}{}
		c.byPK[pk] = set
	}
	set[e] = struct{}{}
}

func (c *l1Cache) unindex(e *l1Entry) {
	set := c.byPK[e.pk]
	delete(set, e)
	if len(set) == 0 {
		delete(c.byPK, e.pk)
	}
}

func (c *l1Cache) remove(e *l1Entry) {
	c.unindex(e)
	if m := c.byReq[e.def.Name]; m != nil && m[e.rawScope] == e {
		delete(m, e.rawScope)
		c.n--
	}
}

// evictOne removes any one entry (map order is unspecified), of the
// provider being put if it has one, so a caller filling L1 with spellings
// evicts mostly its own provider's entries.
func (c *l1Cache) evictOne(prefer map[string]*l1Entry) {
	for _, e := range prefer {
		c.remove(e)
		return
	}
	for _, m := range c.byReq {
		for _, e := range m {
			c.remove(e)
			return
		}
	}
}

// purgePK drops every entry for a cache key (revocation, forced refresh).
func (c *l1Cache) purgePK(pk string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := range c.byPK[pk] {
		c.remove(e)
	}
}

// purgeToken drops every entry holding the token with this SHA-256.
func (c *l1Cache) purgeToken(sha string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, set := range c.byPK {
		for e := range set {
			if e.sha == sha {
				c.remove(e)
			}
		}
	}
}
