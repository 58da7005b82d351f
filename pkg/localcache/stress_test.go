package localcache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// Many goroutines at once on a small cache: Get, Rejected and Renew race
// on shared keys with short deadlines. The size bound holds at every
// moment a caller looks, every token served meets its caller's min_ttl,
// and a rejected token is never served to the goroutine that reported it
// once its replacement came back.
func TestManyCallersAtOnce(t *testing.T) {
	v := newVend(time.Hour)
	v.delay = 100 * time.Microsecond
	c := newCache(v, Options{MaxEntries: 8, RenewConcurrency: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 32 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 200 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(r.IntN(3))*time.Millisecond+50*time.Microsecond)
				req := Request{Provider: fmt.Sprintf("p%d", r.IntN(12)), Scope: []string{"", "a b", "b a", "a  b "}[r.IntN(4)], MinTTL: time.Duration(r.IntN(40)) * time.Minute}
				switch r.IntN(10) {
				case 0:
					c.Renew(ctx)
				case 1, 2:
					tok, err := c.Get(ctx, req)
					if err == nil {
						if rep, err := c.Rejected(ctx, req, TokenSHA256(tok.AccessToken)); err == nil && rep.AccessToken == tok.AccessToken {
							errs <- fmt.Errorf("the rejected token %s came back as its replacement", tok.AccessToken)
						}
					}
				default:
					tok, err := c.Get(ctx, req)
					if err == nil && time.Duration(tok.ExpiresIn)*time.Second < min(req.MinTTL, 30*time.Minute)-time.Second {
						errs <- fmt.Errorf("served %d s left for min_ttl %v", tok.ExpiresIn, req.MinTTL)
					}
				}
				if n := c.Stats().Entries; n > 8 {
					errs <- fmt.Errorf("%d entries, bound 8", n)
				}
				cancel()
				if r.IntN(50) == 0 {
					v.advance(time.Duration(r.IntN(10)) * time.Minute)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
