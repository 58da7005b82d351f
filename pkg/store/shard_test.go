package store_test

import (
	"fmt"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/store"
)

// Provider names come in families that differ in a letter or two
// (partner-a, partner-i, team-qay): the shard must depend on every bit of
// every character. FNV-1a's low bits (h % 8) depend only on each
// character's low three bits, so a, i, q and y (0x61, 0x69, 0x71, 0x79)
// all landed in one shard. Every family below spreads over all 8 shards,
// none holding more than twice its share.
func TestShardSpread(t *testing.T) {
	families := map[string][]string{}
	letters := "aiqy" // equal in their low three bits
	for _, a := range letters {
		for _, b := range letters {
			for _, c := range letters {
				families["team-xyz"] = append(families["team-xyz"], fmt.Sprintf("team-%c%c%c", a, b, c))
			}
		}
	}
	for i := range 64 {
		families["merchant-NNN"] = append(families["merchant-NNN"], fmt.Sprintf("merchant-%03d", i))
		families["partner-x-eu"] = append(families["partner-x-eu"], fmt.Sprintf("partner-%c-eu-%d", 'a'+i%16, i/16))
	}
	for name, names := range families {
		counts := make([]int, store.Shards)
		for _, n := range names {
			sh := store.ShardOf(n)
			if sh < 0 || sh >= store.Shards {
				t.Fatalf("%s: shard %d", n, sh)
			}
			counts[sh]++
		}
		share := len(names) / store.Shards
		for sh, c := range counts {
			if c == 0 || c > 2*share {
				t.Errorf("family %s (%d names): shard %d holds %d (counts %v), want 1 to %d", name, len(names), sh, c, counts, 2*share)
				break
			}
		}
	}
}
