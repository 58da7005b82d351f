package vend

import (
	"strings"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

// L1 is keyed by the request as written, and one request has unbounded
// spellings (spaces before, between and after, repeated scopes, in any
// order, each up to 1024 bytes): one allowed caller repeating a valid
// request in 20 000 spellings made 20 000 entries in a warm instance,
// each holding the token, until the instance ran out of memory. Before the
// fix L1 had no bound.
func TestL1BoundedWhateverTheSpellings(t *testing.T) {
	c := newL1()
	def := &provider.Definition{Name: "p"}
	now := time.Unix(1_900_000_000, 0)
	tok := Token{AccessToken: strings.Repeat("t", 1000), ExpiresAt: now.Add(time.Hour)}
	for i := range 20_000 {
		raw := strings.Repeat(" ", i%1000) + "read" + strings.Repeat(" ", i/1000)
		c.put(def, raw, "token#p#f#\"s=read", tok, now)
	}
	n, idx := len(c.byReq["p"]), len(c.byPK["token#p#f#\"s=read"])
	if n > l1MaxEntries || idx != n {
		t.Fatalf("L1 holds %d entries for one provider (%d indexed by key), want at most %d", n, idx, l1MaxEntries)
	}
	// Spread over providers, the bound is one for all of them.
	for i := range 20_000 {
		d := &provider.Definition{Name: string(rune('a' + i%20))}
		c.put(d, strings.Repeat(" ", i%1000)+"read"+strings.Repeat(" ", i/1000), "token#"+d.Name+"#f#\"s=read", tok, now)
	}
	total := 0
	for _, m := range c.byReq {
		total += len(m)
	}
	indexed := 0
	for _, l := range c.byPK {
		indexed += len(l)
	}
	if total > l1MaxEntries || indexed != total || c.n != total {
		t.Fatalf("L1 holds %d entries over 21 providers (%d indexed, %d counted), want at most %d", total, indexed, c.n, l1MaxEntries)
	}
	// What was put last is served.
	if _, ok := c.get(def, "read", now, time.Minute, time.Minute); !ok {
		c.put(def, "read", "token#p#f#\"s=read", tok, now)
		if _, ok := c.get(def, "read", now, time.Minute, time.Minute); !ok {
			t.Fatal("an entry just put is not served")
		}
	}
}
