package client_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/client"
)

// lateVend answers like the vendor holding a token with five minutes left
// of an hour: it fetches a newer one only when min_ttl asks for more. A
// gate, when set, holds every fetch until closed (or its ctx ends).
type lateVend struct {
	mu      sync.Mutex
	minTTLs []time.Duration
	scopes  []string
	calls   atomic.Int32
	gate    chan struct{}
}

func (v *lateVend) Fetch(ctx context.Context, r client.Request) (*client.Token, error) {
	n := v.calls.Add(1)
	v.mu.Lock()
	v.minTTLs = append(v.minTTLs, r.MinTTL)
	v.scopes = append(v.scopes, r.Scope)
	v.mu.Unlock()
	if v.gate != nil {
		select {
		case <-v.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	now := time.Now()
	issued := now.Add(-55 * time.Minute)
	if r.MinTTL > 5*time.Minute {
		issued = now
	}
	exp := issued.Add(time.Hour)
	return &client.Token{Provider: r.Provider, AccessToken: "tok-" + string(rune('A'+n)), TokenType: "Bearer",
		ExpiresIn: int64(exp.Sub(now) / time.Second), ExpiresAt: exp.UTC().Format(time.RFC3339), IssuedAt: issued.UTC().Format(time.RFC3339)}, nil
}

// The caller's MinTTL goes to the vendor and is what the token is judged
// on: asked for 20 minutes, the client neither sends 0 nor serves a
// 5-minute token, fetched or cached.
func TestClientSendsAndHonoursMinTTL(t *testing.T) {
	v := &lateVend{}
	c := client.New(v)
	short, err := c.TokenFor(context.Background(), client.Request{Provider: "k2"})
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(short.Expiry); left > 6*time.Minute {
		t.Fatalf("default min_ttl: %v left, the vendor's token had 5 min", left)
	}
	tok, err := c.TokenFor(context.Background(), client.Request{Provider: "k2", MinTTL: 20 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(tok.Expiry); left < 20*time.Minute {
		t.Fatalf("asked for 20 min, got a token with %v left", left)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.minTTLs) != 2 || v.minTTLs[1] != 20*time.Minute {
		t.Fatalf("min_ttl sent to the vendor: %v, want the second fetch to ask 20m0s", v.minTTLs)
	}
}

// One caller giving up does not fail the others joined to its fetch, and
// returns at once.
func TestClientOneCallersCancellationDoesNotFailOthers(t *testing.T) {
	v := &lateVend{gate: make(chan struct{})}
	c := client.New(v)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := c.Token(ctx, "k2", "")
		first <- err
	}()
	for v.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() {
		_, err := c.Token(context.Background(), "k2", "")
		second <- err
	}()
	time.Sleep(20 * time.Millisecond) // the second joins the fetch in flight
	cancel()
	select {
	case err := <-first:
		if err == nil {
			t.Fatal("the cancelled caller got a token")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cancelled caller still waits for the fetch")
	}
	close(v.gate)
	if err := <-second; err != nil {
		t.Fatalf("the caller who waited failed with the other's cancellation: %v", err)
	}
	if n := v.calls.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}

// Token, TokenFor and Rejected name a key one way: the scope set in any
// order is one key, and a rejection drops the token Token cached.
func TestClientOneKeySpelling(t *testing.T) {
	v := &lateVend{}
	c := client.New(v)
	a, err := c.Token(context.Background(), "k2", "write read")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.TokenFor(context.Background(), client.Request{Provider: "k2", Scope: "read  write read"})
	if err != nil || b.AccessToken != a.AccessToken || v.calls.Load() != 1 {
		t.Fatalf("the same scope set spelled another way: %v, %d fetches", err, v.calls.Load())
	}
	fresh, err := c.Rejected(context.Background(), "k2", "read write", a.AccessToken)
	if err != nil || fresh.AccessToken == a.AccessToken {
		t.Fatalf("rejected: %v", err)
	}
	again, _ := c.Token(context.Background(), "k2", "write read")
	if again.AccessToken != fresh.AccessToken || v.calls.Load() != 2 {
		t.Fatalf("after the rejection Token serves %q (%d fetches), want the replacement", again.AccessToken, v.calls.Load())
	}
}
