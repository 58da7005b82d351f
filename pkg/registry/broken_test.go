package registry

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

// TestBrokenDefinitionReadOncePerNotFoundTTL: a secret whose definition
// does not load is, to a caller, like a missing one, and the JWKS route
// (no IAM) takes any name. Asked again and again, it is read from the
// source once per NotFoundTTL, not once per request (a Secrets Manager
// call each, which an unauthenticated prober could repeat at will); a
// definition that loaded before is still served stale while the secret is
// broken; once fixed, it loads after NotFoundTTL.
func TestBrokenDefinitionReadOncePerNotFoundTTL(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	broken := fmt.Errorf("secret x: %w", &provider.FieldError{Provider: "half", Field: "token_url", Reason: "required"})
	src := &countingSource{err: broken}
	c := NewCached(src, CacheOptions{Now: func() time.Time { return now }})
	for range 100 {
		var fe *provider.FieldError
		if _, err := c.Get(bg, "half"); !errors.As(err, &fe) {
			t.Fatalf("want the definition's error, got %v", err)
		}
	}
	if n := src.calls.Load(); n != 1 {
		t.Fatalf("100 requests for a broken definition made %d source reads, want 1", n)
	}
	src.mu.Lock()
	src.err, src.defs = nil, map[string]*provider.Definition{"half": {Name: "half"}}
	src.mu.Unlock()
	now = now.Add(31 * time.Second)
	if d, err := c.Get(bg, "half"); err != nil || d.Name != "half" {
		t.Fatalf("fixed definition after NotFoundTTL: %v %v", d, err)
	}
	// Broken again: the definition that loaded is served stale.
	src.mu.Lock()
	src.err = broken
	src.mu.Unlock()
	now = now.Add(301 * time.Second)
	if d, err := c.Get(bg, "half"); err != nil || d.Name != "half" {
		t.Fatalf("stale definition while the secret is broken: %v %v", d, err)
	}
}
