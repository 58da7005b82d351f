// Package storetest is the behaviour every token store must have, run
// against the in-memory store and against DynamoDB Local alike.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/store"
)

// Store is the store API under test.
type Store interface {
	Get(ctx context.Context, pk string, consistent bool) (*store.Item, error)
	Put(ctx context.Context, it *store.Item, expect int64) error
	Due(ctx context.Context, before time.Time, shards []int) ([]*store.Item, error)
	ScanPage(ctx context.Context, f store.Filter, after string, limit int) ([]*store.Item, string, error)
}

// Run runs the contract against stores made by newStore (one per subtest).
func Run(t *testing.T, newStore func(t *testing.T) Store) {
	ctx := context.Background()
	t.Run("CASCreateAndUpdate", func(t *testing.T) {
		s := newStore(t)
		it := &store.Item{PK: "token#p#fp#read", Provider: "p", Scope: "read", Version: 1, ExpiresAt: 2e9, Token: store.Secret{Plain: "tok"}}
		if err := s.Put(ctx, it, 1); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("put expecting v1 on absent record: %v", err)
		}
		if err := s.Put(ctx, it, 0); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, it, 0); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("second create must conflict: %v", err)
		}
		got, err := s.Get(ctx, it.PK, true)
		if err != nil || got == nil || got.Token.Plain != "tok" || got.Version != 1 || got.ExpiresAt != 2e9 {
			t.Fatalf("get: %+v %v", got, err)
		}
		next := *got
		next.Version = 2
		next.LeaseOwner, next.LeaseUntilMS = "me", 123
		if err := s.Put(ctx, &next, 2); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("wrong expected version accepted: %v", err)
		}
		if err := s.Put(ctx, &next, 1); err != nil {
			t.Fatal(err)
		}
		got, _ = s.Get(ctx, it.PK, true)
		if got.LeaseOwner != "me" || got.LeaseUntilMS != 123 || got.Version != 2 {
			t.Fatalf("update lost: %+v", got)
		}
		if missing, err := s.Get(ctx, "token#nope", true); missing != nil || err != nil {
			t.Fatalf("missing record: %+v %v", missing, err)
		}
	})
	t.Run("SealedTokenRoundTrips", func(t *testing.T) {
		s := newStore(t)
		blob := make([]byte, 6000) // larger than KMS's 4 KiB plaintext limit
		for i := range blob {
			blob[i] = byte(i)
		}
		it := &store.Item{PK: "token#p#fp#", Version: 1, ExpiresAt: 2e9, Token: store.Secret{Sealed: blob}}
		if err := s.Put(ctx, it, 0); err != nil {
			t.Fatal(err)
		}
		got, _ := s.Get(ctx, it.PK, true)
		if got.Token.Plain != "" || string(got.Token.Sealed) != string(blob) {
			t.Fatal("sealed token did not round-trip")
		}
		// A record holding no token (a lease on a cold key) round-trips too.
		cold := &store.Item{PK: "token#p#fp#cold", Version: 1, ExpiresAt: 2e9, LeaseOwner: "x"}
		if err := s.Put(ctx, cold, 0); err != nil {
			t.Fatal(err)
		}
		got, _ = s.Get(ctx, cold.PK, true)
		if !got.Token.IsZero() {
			t.Fatalf("empty token came back as %+v", got.Token)
		}
	})
	t.Run("ConcurrentCASHasOneWinner", func(t *testing.T) {
		s := newStore(t)
		base := &store.Item{PK: "token#race", Version: 1, ExpiresAt: 2e9}
		if err := s.Put(ctx, base, 0); err != nil {
			t.Fatal(err)
		}
		for round := 0; round < 5; round++ {
			var wins, conflicts atomic.Int32
			var wg sync.WaitGroup
			for i := 0; i < 16; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					next := *base
					next.Version = base.Version + 1
					next.LeaseOwner = fmt.Sprint("owner-", i)
					switch err := s.Put(ctx, &next, base.Version); {
					case err == nil:
						wins.Add(1)
					case errors.Is(err, store.ErrConflict):
						conflicts.Add(1)
					default:
						t.Error(err)
					}
				}(i)
			}
			wg.Wait()
			if wins.Load() != 1 || conflicts.Load() != 15 {
				t.Fatalf("round %d: %d winners, %d conflicts", round, wins.Load(), conflicts.Load())
			}
			base, _ = s.Get(ctx, base.PK, true)
		}
	})
	t.Run("ExpiredRecordsStayUntilDeleted", func(t *testing.T) {
		// Like DynamoDB TTL, expiry does not remove a record by itself:
		// readers must check expires_at.
		s := newStore(t)
		old := &store.Item{PK: "token#old", Version: 1, ExpiresAt: time.Now().Add(-time.Hour).Unix(), Token: store.Secret{Plain: "x"}}
		if err := s.Put(ctx, old, 0); err != nil {
			t.Fatal(err)
		}
		got, _ := s.Get(ctx, old.PK, true)
		if got == nil || got.Expiry().After(time.Now()) {
			t.Fatalf("got %+v", got)
		}
	})
	t.Run("ConflictCarriesCurrentRecord", func(t *testing.T) {
		// What lets a writer whose write landed, got a 5xx and was retried
		// by the SDK recognise its own write in the conflict.
		s := newStore(t)
		it := &store.Item{PK: "token#retried", Version: 1, ExpiresAt: 2e9, WriteID: "w1"}
		if err := s.Put(ctx, it, 0); err != nil {
			t.Fatal(err)
		}
		err := s.Put(ctx, it, 0)
		cur, ok := store.CurrentOnConflict(err)
		if !errors.Is(err, store.ErrConflict) || !ok || cur.WriteID != "w1" || cur.Version != 1 {
			t.Fatalf("conflict: %v, current %+v", err, cur)
		}
		next := *it
		next.Version, next.WriteID = 2, "w2"
		err = s.Put(ctx, &next, 5)
		if cur, ok := store.CurrentOnConflict(err); !ok || cur.WriteID != "w1" {
			t.Fatalf("conflict on a wrong version: %v, current %+v", err, cur)
		}
	})
	t.Run("ScanFilters", func(t *testing.T) {
		s := newStore(t)
		now := time.Now()
		items := []*store.Item{
			{PK: "token#a#f#read", Provider: "a", Version: 1, Token: store.Secret{Plain: "1"}, RefreshAt: now.Add(-time.Minute).Unix()},
			{PK: "token#a#f#write", Provider: "a", Version: 1, Token: store.Secret{Plain: "2"}, RefreshAt: now.Add(time.Hour).Unix()},
			{PK: "token#b#f#", Provider: "b", Version: 1, Token: store.Secret{Plain: "3"}, RefreshAt: now.Add(-time.Second).Unix()},
			{PK: "token#c#f#", Provider: "c", Version: 1, LeaseOwner: "x"},
			{PK: "cooldown#a", Provider: "a", Version: 1, CooldownUntil: 5},
		}
		for _, it := range items {
			if err := s.Put(ctx, it, 0); err != nil {
				t.Fatal(err)
			}
		}
		check := func(f store.Filter, want ...string) {
			t.Helper()
			got, next, err := s.ScanPage(ctx, f, "", 100)
			if err != nil || next != "" {
				t.Fatalf("one page of 100 should hold the table: next %q, %v", next, err)
			}
			seen := map[string]bool{}
			for _, it := range got {
				seen[it.PK] = true
			}
			if len(got) != len(want) {
				t.Fatalf("filter %+v: got %d records %v, want %v", f, len(got), seen, want)
			}
			for _, w := range want {
				if !seen[w] {
					t.Fatalf("filter %+v: missing %s (got %v)", f, w, seen)
				}
			}
		}
		check(store.Filter{Prefix: "token#"}, "token#a#f#read", "token#a#f#write", "token#b#f#", "token#c#f#")
		check(store.Filter{Prefix: "token#", Providers: []string{"a"}}, "token#a#f#read", "token#a#f#write")
		check(store.Filter{Prefix: "token#", Providers: []string{"a", "c"}}, "token#a#f#read", "token#a#f#write", "token#c#f#")
	})
	t.Run("RefreshIndexIsSparseAndOrdered", func(t *testing.T) {
		s := newStore(t)
		now := time.Now()
		at := func(d time.Duration) int64 { return now.Add(d).Unix() }
		items := []*store.Item{
			{PK: "token#a#f#late", Provider: "a", Scope: "late", Version: 1, Token: store.Secret{Plain: "1"}, RefreshAt: at(-time.Minute), ExpiresAt: at(time.Hour), LastUsedAt: at(-time.Hour)},
			{PK: "token#a#f#soon", Provider: "a", Scope: "soon", Version: 1, Token: store.Secret{Sealed: []byte("x")}, RefreshAt: at(-2 * time.Minute), ExpiresAt: at(time.Minute)},
			{PK: "token#a#f#notdue", Provider: "a", Version: 1, Token: store.Secret{Plain: "2"}, RefreshAt: at(time.Hour), ExpiresAt: at(2 * time.Hour)},
			{PK: "token#a#f#retired", Provider: "a", Version: 1, Token: store.Secret{Plain: "3"}, RefreshAt: at(-time.Minute), ExpiresAt: at(time.Hour), RetiredAt: at(0)},
			{PK: "token#a#f#tombstone", Provider: "a", Version: 1, RefreshAt: at(-time.Minute), ExpiresAt: at(time.Hour)},
			{PK: "token#c#f#", Provider: "c", Version: 1, LeaseOwner: "x"},
			{PK: "cooldown#a", Provider: "a", Version: 1, CooldownUntil: 5},
		}
		for _, it := range items {
			if err := s.Put(ctx, it, 0); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.Due(ctx, now, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].PK != "token#a#f#soon" || got[1].PK != "token#a#f#late" {
			var pks []string
			for _, it := range got {
				pks = append(pks, it.PK)
			}
			t.Fatalf("due: %v, want soon then late (token holders only, not retired, closest to expiry first)", pks)
		}
		late := got[1]
		if !late.Token.IsZero() || late.Version != 0 || late.Provider != "a" || late.Scope != "late" || late.LastUsedAt != at(-time.Hour) || late.ExpiresAt != at(time.Hour) {
			t.Fatalf("index projection: %+v (want keys and usage, never the token)", late)
		}
		// Retiring takes a record out of the index, a use puts it back.
		cur, _ := s.Get(ctx, "token#a#f#late", true)
		next := *cur
		next.Version, next.RetiredAt = 2, now.Unix()
		if err := s.Put(ctx, &next, 1); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Due(ctx, now, nil); len(got) != 1 {
			t.Fatalf("retired record still in the index: %d due", len(got))
		}
		next.Version, next.RetiredAt = 3, 0
		if err := s.Put(ctx, &next, 2); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Due(ctx, now.Add(3*time.Hour), nil); len(got) != 3 {
			t.Fatalf("un-retired record not back in the index: %d due", len(got))
		}
	})
	t.Run("DueByShardPartitionsTheIndex", func(t *testing.T) {
		s := newStore(t)
		now := time.Now()
		const keys = 64
		for i := range keys {
			prov := fmt.Sprintf("p%d", i%16) // a provider's keys share its shard
			it := &store.Item{PK: fmt.Sprintf("token#%s#f#s%02d", prov, i), Provider: prov, Scope: fmt.Sprintf("s%02d", i), Version: 1,
				Token: store.Secret{Plain: "t"}, RefreshAt: now.Add(-time.Minute).Unix(), ExpiresAt: now.Add(time.Hour).Unix()}
			if err := s.Put(ctx, it, 0); err != nil {
				t.Fatal(err)
			}
		}
		seen := map[string]int{}
		for sh := range store.Shards {
			got, err := s.Due(ctx, now, []int{sh})
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range got {
				if store.ShardOf(it.Provider) != sh || it.FoundInShard != sh {
					t.Fatalf("shard %d returned %s of shard %d (found in %d)", sh, it.PK, store.ShardOf(it.Provider), it.FoundInShard)
				}
				seen[it.PK]++
			}
		}
		if len(seen) != keys {
			t.Fatalf("the shards together hold %d keys, want %d", len(seen), keys)
		}
		for pk, n := range seen {
			if n != 1 {
				t.Fatalf("%s in %d shards", pk, n)
			}
		}
	})
	t.Run("ScanPagesAreBoundedAndComplete", func(t *testing.T) {
		s := newStore(t)
		want := map[string]bool{}
		for i := 0; i < 23; i++ {
			it := &store.Item{PK: fmt.Sprintf("token#p#f#s%02d", i), Provider: "p", Version: 1, Token: store.Secret{Plain: "t"}}
			if i%5 == 0 {
				it.PK, it.Provider = fmt.Sprintf("cooldown#q%02d", i), "q"
			} else {
				want[it.PK] = true
			}
			if err := s.Put(ctx, it, 0); err != nil {
				t.Fatal(err)
			}
		}
		got := map[string]bool{}
		after, pages := "", 0
		for {
			items, next, err := s.ScanPage(ctx, store.Filter{Prefix: "token#"}, after, 5)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if len(items) > 5 {
				t.Fatalf("page of %d records, limit 5", len(items))
			}
			for _, it := range items {
				if got[it.PK] || !want[it.PK] {
					t.Fatalf("record %s repeated or not matching", it.PK)
				}
				got[it.PK] = true
			}
			if next == "" {
				break
			}
			after = next
			if pages > 10 {
				t.Fatal("paging does not end")
			}
		}
		if len(got) != len(want) || pages < 5 {
			t.Fatalf("%d of %d records in %d pages", len(got), len(want), pages)
		}
	})
}
