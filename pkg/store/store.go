// Package store holds the token cache's record type and its in-memory
// implementation. Every change to a record is a compare-and-swap on its
// version, which is all the vending core needs: a lease is a CAS that sets an
// owner, a token write is a CAS that only the current lease version can win.
package store

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// ErrRejected means the store refused this record or request itself (too
// large, malformed): the store is up, so it is not a reason to vend around
// it or to stop using it.
var ErrRejected = errors.New("store: record refused")

// ErrConflict means the record's version was not the expected one.
var ErrConflict = errors.New("store: version conflict")

// ConflictError is a version conflict that carries the record as it was when
// the condition failed (nil if absent or not returned). A write that landed,
// got a 5xx and was retried by the SDK fails its own condition; the record's
// write_id tells the writer it won after all, with no extra read.
type ConflictError struct{ Current *Item }

func (e *ConflictError) Error() string        { return ErrConflict.Error() }
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// CurrentOnConflict returns the record a ConflictError carries.
func CurrentOnConflict(err error) (*Item, bool) {
	var ce *ConflictError
	if errors.As(err, &ce) && ce.Current != nil {
		return ce.Current, true
	}
	return nil, false
}

// Secret is an access token at rest: plain text, or sealed (envelope-encrypted).
type Secret struct {
	Plain  string
	Sealed []byte
}

// IsZero reports whether no token is stored.
func (s Secret) IsZero() bool { return s.Plain == "" && len(s.Sealed) == 0 }

// Item is one cache record (docs/design.md §4). Times in seconds are what DynamoDB
// TTL and humans read; lease and cooldown times are in milliseconds because
// leases are seconds long.
type Item struct {
	PK       string `dynamodbav:"pk"`
	Provider string `dynamodbav:"provider,omitempty"`
	Scope    string `dynamodbav:"scope"`
	// Resource and Audience are the key's target (space-separated), which
	// the refresher needs to renew it; empty for most keys.
	Resource    string `dynamodbav:"resource,omitempty"`
	Audience    string `dynamodbav:"audience,omitempty"`
	Fingerprint string `dynamodbav:"registration,omitempty"`
	Token       Secret `dynamodbav:"access_token"`
	TokenType   string `dynamodbav:"token_type,omitempty"`
	// JKT is the thumbprint of the DPoP key a DPoP-bound token is bound
	// to (RFC 9449 §6; token_type DPoP); absent for other tokens.
	JKT      string `dynamodbav:"jkt,omitempty"`
	IssuedAt int64  `dynamodbav:"issued_at,omitempty"`
	// ExpiresAt is the DynamoDB TTL attribute (epoch seconds).
	ExpiresAt     int64  `dynamodbav:"expires_at"`
	RefreshAt     int64  `dynamodbav:"refresh_at,omitempty"`
	Version       int64  `dynamodbav:"version"`
	LeaseOwner    string `dynamodbav:"lease_owner,omitempty"`
	LeaseUntilMS  int64  `dynamodbav:"lease_until,omitempty"`
	LastError     string `dynamodbav:"last_error,omitempty"`
	LastErrorAt   int64  `dynamodbav:"last_error_at,omitempty"`
	FailedUntilMS int64  `dynamodbav:"failed_until,omitempty"`
	RejectedAtMS  int64  `dynamodbav:"rejected_at,omitempty"`
	// ForcedAtMS is when a forced refresh last took the lease: forced
	// refreshes are limited to one per key per reject interval.
	ForcedAtMS int64 `dynamodbav:"forced_at,omitempty"`
	// RevokedAtMS is when a revoke last purged the key: revokes are
	// limited to one per key per reject interval, fleet-wide.
	RevokedAtMS int64 `dynamodbav:"revoked_at,omitempty"`
	// LastUsedAt is when a caller last had this key's token (epoch
	// seconds), recorded at most once per usage interval (docs/design.md §3).
	LastUsedAt int64 `dynamodbav:"last_used_at,omitempty"`
	// RetiredAt is set when the refresher stopped renewing an idle key; the
	// record leaves the refresh index and expires by TTL unless used again.
	RetiredAt     int64 `dynamodbav:"retired_at,omitempty"`
	CooldownUntil int64 `dynamodbav:"cooldown_until,omitempty"` // ms
	CooldownFrom  int64 `dynamodbav:"cooldown_from,omitempty"`  // ms: when the current cooldown opened
	// Members is a provider's key-count record (keys#{provider}): the scope
	// keys admitted under max_keys, each with when it was admitted (epoch s).
	Members map[string]int64 `dynamodbav:"members,omitempty"`
	// CheckedAtMS is when a full key-count record's members were last
	// checked against the table.
	CheckedAtMS int64 `dynamodbav:"checked_at,omitempty"`
	// WriteID is unique per write, so a write whose outcome is unknown
	// (timeout, 5xx) can be recognised when the record is read back.
	WriteID string `dynamodbav:"write_id,omitempty"`
	// RateNextMS is a provider's rate record (rate#{provider}): the
	// earliest time the refresher may send its next token request, so a
	// fetch_rate holds across runs (ms).
	RateNextMS int64 `dynamodbav:"rate_next,omitempty"`

	// FoundInShard is the refresh-index shard Due found the record in (not
	// stored): a record written before its provider's shard was decided
	// (an upgrade) can be in another than ShardOf(Provider).
	FoundInShard int `dynamodbav:"-"`
}

// InRefreshIndex reports whether the record belongs in the refresh index:
// it holds a token and has not been retired. The DynamoDB store writes the
// index key only on such records (a sparse index).
func (it *Item) InRefreshIndex() bool { return !it.Token.IsZero() && it.RetiredAt == 0 }

// IndexAttributes are the attributes the refresh index projects besides its
// keys (pk, and refresh_at): what a refresher run needs to order and
// confirm a key, never the token.
var IndexAttributes = []string{"provider", "scope", "registration", "issued_at", "expires_at", "last_used_at"}

// Projected is the record as the refresh index holds it.
func (it *Item) Projected() *Item {
	return &Item{PK: it.PK, Provider: it.Provider, Scope: it.Scope, Fingerprint: it.Fingerprint,
		IssuedAt: it.IssuedAt, ExpiresAt: it.ExpiresAt, RefreshAt: it.RefreshAt, LastUsedAt: it.LastUsedAt}
}

// Expiry returns the token's expiry.
func (it *Item) Expiry() time.Time { return time.Unix(it.ExpiresAt, 0) }

// LeaseUntil returns when the current lease lapses.
func (it *Item) LeaseUntil() time.Time { return time.UnixMilli(it.LeaseUntilMS) }

// Filter selects records in a scan. Zero fields match everything.
type Filter struct {
	// Prefix limits to keys starting with it ("token#").
	Prefix string
	// Providers limits to these providers.
	Providers []string
}

// Matches applies f to one record; both implementations use it.
func (f Filter) Matches(it *Item) bool {
	if f.Prefix != "" && !strings.HasPrefix(it.PK, f.Prefix) {
		return false
	}
	if len(f.Providers) > 0 {
		found := false
		for _, p := range f.Providers {
			found = found || p == it.Provider
		}
		if !found {
			return false
		}
	}
	return true
}

// Memory is an in-process store with the same semantics as the DynamoDB one.
type Memory struct {
	mu    sync.Mutex
	items map[string]Item
	// placed is the refresh-index shard each record was written to, as
	// DynamoDB's index holds it: set by the write, so a record keeps its
	// shard until it is written again.
	placed map[string]int
	now    func() time.Time
}

// NewMemory returns an empty store. now is used to hide expired records; nil means time.Now.
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{items: map[string]Item{}, placed: map[string]int{}, now: now}
}

// Get returns a copy of the record, or nil. Like DynamoDB it keeps records
// past their TTL around; callers ignore expired tokens.
func (m *Memory) Get(_ context.Context, pk string, _ bool) (*Item, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	it, ok := m.items[pk]
	if !ok {
		return nil, nil
	}
	return clone(&it), nil
}

// Put stores it if the current version is expect (0: no record).
func (m *Memory) Put(_ context.Context, it *Item, expect int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.items[it.PK]
	if !ok && expect != 0 {
		return &ConflictError{}
	}
	if ok && cur.Version != expect {
		return &ConflictError{Current: clone(&cur)}
	}
	m.items[it.PK] = *clone(it)
	m.placed[it.PK] = ShardOf(it.Provider)
	return nil
}

// Scan returns the records f matches, sorted by key.
func (m *Memory) Scan(_ context.Context, f Filter) ([]*Item, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Item
	for _, it := range m.items {
		if f.Matches(&it) {
			out = append(out, clone(&it))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PK < out[j].PK })
	return out, nil
}

// Shards is how many partitions the refresh index spreads keys over: the
// unit a refresher run can be fanned out by (docs/design.md §4).
const Shards = 8

// ShardOf is the refresh-index shard of a provider's keys. Every key of a
// provider is in one shard, so one refresher run at a time (the holder of
// the shard's lease) renews a provider, and its max_concurrent_fetches and
// fetch_rate bind without being shared out. The shard is the high bits of
// FNV-1a of the name after a final avalanche (murmur3's fmix32): FNV-1a's
// low bits depend only on each character's low bits, so names differing in
// a letter or two (partner-a, partner-i) shared a shard.
func ShardOf(provider string) int {
	h := uint32(2166136261)
	for i := 0; i < len(provider); i++ {
		h = (h ^ uint32(provider[i])) * 16777619
	}
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return int(h >> 29) // the top 3 bits: Shards is 8
}

// AllShards lists every shard, for a run that reads the whole index.
func AllShards() []int {
	out := make([]int, Shards)
	for i := range out {
		out[i] = i
	}
	return out
}

// Due returns, as the refresh index holds them (Projected, with
// FoundInShard), the records in the given shards of the index (nil: all)
// whose refresh_at is before before, closest to expiry first.
func (m *Memory) Due(_ context.Context, before time.Time, shards []int) ([]*Item, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Item
	for _, it := range m.items {
		sh := m.placed[it.PK]
		if it.InRefreshIndex() && it.RefreshAt < before.Unix() && (shards == nil || slices.Contains(shards, sh)) {
			p := it.Projected()
			p.FoundInShard = sh
			out = append(out, p)
		}
	}
	SortByExpiry(out)
	return out, nil
}

// SortByExpiry orders records closest to expiry first (then by key).
func SortByExpiry(items []*Item) {
	sort.Slice(items, func(i, j int) bool {
		if items[i].ExpiresAt != items[j].ExpiresAt {
			return items[i].ExpiresAt < items[j].ExpiresAt
		}
		return items[i].PK < items[j].PK
	})
}

// ScanPage is one bounded page of Scan: it looks at up to limit records
// with keys after after (in key order here; DynamoDB's order there) and
// returns those f matches, and the key to continue after ("" at the end).
func (m *Memory) ScanPage(_ context.Context, f Filter, after string, limit int) ([]*Item, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	pks := make([]string, 0, len(m.items))
	for pk := range m.items {
		if pk > after {
			pks = append(pks, pk)
		}
	}
	sort.Strings(pks)
	next := ""
	if len(pks) > limit {
		pks, next = pks[:limit], pks[limit-1]
	}
	var out []*Item
	for _, pk := range pks {
		if it := m.items[pk]; f.Matches(&it) {
			out = append(out, clone(&it))
		}
	}
	return out, next, nil
}

func clone(it *Item) *Item {
	cp := *it
	if it.Token.Sealed != nil {
		cp.Token.Sealed = append([]byte(nil), it.Token.Sealed...)
	}
	cp.Members = maps.Clone(it.Members)
	return &cp
}
