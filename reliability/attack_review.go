package main

// Attack rows of the review of issue 27's trust boundary (docs/design.md
// §11, §12.2).

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

func init() {
	registerAttack(231, "JWKS probing a broken definition", jwksBrokenDefinition)
}

// halfSetUp is a definition source in which one secret's definition does
// not load (as registry.SecretsManager reports a malformed secret), and
// which counts its reads (Secrets Manager GetSecretValue calls, in AWS).
type halfSetUp struct {
	countingSource
	broken      string
	brokenReads atomic.Int64
}

func (h *halfSetUp) Get(ctx context.Context, name string) (*provider.Definition, error) {
	if name == h.broken {
		h.brokenReads.Add(1)
		return nil, fmt.Errorf("secret %s: %w", name, &provider.FieldError{Provider: name, Field: "auth_method", Reason: "unknown auth_method"})
	}
	return h.countingSource.Get(ctx, name)
}

// jwksBrokenDefinition: the route without IAM asked again and again for a
// secret whose definition does not load (an operator's half-finished
// change) and for unknown names: the answers must not tell the secret
// exists, and the repeats must not each cost a Secrets Manager read.
func jwksBrokenDefinition(q bool) (attackRow, error) {
	w, err := newWorld(false)
	if err != nil {
		return attackRow{}, err
	}
	defer w.close()
	n := 2000
	if q {
		n = 400
	}
	src := &halfSetUp{countingSource: countingSource{defs: w.defs}, broken: "half-set-up"}
	answer := w.jwksProber(src)
	ref := answer("no-such-provider")
	r := attackRow{Expect: "the broken secret answers the one 404 of unknown names (leaked: answers that tell it apart); read once, not once per request (store ops: its definition reads)"}
	for range n {
		r.Attempts++
		if answer("half-set-up") == ref {
			r.Refused++
		} else {
			r.Leaked++
		}
	}
	r.StoreOps = int(src.brokenReads.Load())
	r.Pass = r.Leaked == 0 && r.StoreOps == 1
	return r, nil
}
