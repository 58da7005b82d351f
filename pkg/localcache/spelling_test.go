package localcache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// strictVend refuses, as the vendor does (provider.NormalizeScope), a scope
// token holding anything but printable ASCII: the vendor splits scopes on
// the space only, so "read\twrite" is one malformed token, not two.
type strictVend struct{ *vend }

func (s strictVend) Fetch(ctx context.Context, r Request) (*Token, error) {
	if s.gate != nil {
		<-s.gate // the vendor answers after a while
	}
	for _, f := range strings.Split(r.Scope, " ") {
		for i := 0; i < len(f); i++ {
			if f[i] < 0x21 || f[i] > 0x7e || f[i] == '"' || f[i] == '\\' {
				s.calls.Add(1)
				return nil, &Error{Code: "InvalidRequest", Message: "invalid scope"}
			}
		}
	}
	return s.vend.Fetch(ctx, r)
}

// A scope the vendor refuses (tab, NBSP, other Unicode spaces between two
// tokens) is its own key: it is never served the token of the scope set it
// resembles. Before the fix the cache split scopes on every
// Unicode space (strings.Fields) while the vendor splits on ' ' only.
func TestMalformedSpellingNotServed(t *testing.T) {
	v := newVend(time.Hour)
	c := New(strictVend{v}, Options{Now: v.clock})
	ctx := context.Background()
	good, err := c.Get(ctx, Request{Provider: "p", Scope: "read write", MinTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"read\twrite", "read\u00a0write", "write\u2003read", "read\nwrite"} {
		tok, err := c.Get(ctx, Request{Provider: "p", Scope: bad, MinTTL: time.Minute})
		var ve *Error
		if !errors.As(err, &ve) || ve.Code != "InvalidRequest" {
			t.Fatalf("scope %q: got token %v (same as %q's: %v), err %v; want the vendor's InvalidRequest",
				bad, tok.AccessToken != "", "read write", tok.AccessToken == good.AccessToken, err)
		}
	}

}

// A caller spelling a malformed scope first into the fetch does not fail a
// concurrent caller of the well-formed scope set with its refusal.
func TestMalformedSpellingFailsNoJoinedCaller(t *testing.T) {
	ctx := context.Background()
	v2 := newVend(time.Hour)
	v2.gate = make(chan struct{})
	c2 := New(strictVend{v2}, Options{Now: v2.clock})
	var wg sync.WaitGroup
	var goodErr error
	wg.Go(func() { _, _ = c2.Get(ctx, Request{Provider: "p", Scope: "read\u00a0write", MinTTL: time.Minute}) })
	time.Sleep(20 * time.Millisecond)
	wg.Go(func() { _, goodErr = c2.Get(ctx, Request{Provider: "p", Scope: "write read", MinTTL: time.Minute}) })
	time.Sleep(20 * time.Millisecond)
	close(v2.gate)
	wg.Wait()
	if goodErr != nil {
		t.Fatalf("a well-formed request failed with a malformed caller's refusal: %v", goodErr)
	}
}

// Key is injective: a NUL in one field never spells another field.
func TestKeyInjective(t *testing.T) {
	a := Request{Provider: "p", Scope: "read\x00x", Resource: ""}
	b := Request{Provider: "p", Scope: "read", Resource: "x\x00"}
	if Key(a) == Key(b) {
		t.Fatalf("%#v and %#v share a key", a, b)
	}
}
