package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/smithy-go/middleware"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// secretsWorld puts the world's definitions in moto's Secrets Manager,
// behind a client whose calls fail while down is set (SDK middleware).
type secretsWorld struct {
	*world
	sm     *secretsmanager.Client
	prefix string
	down   atomic.Bool
}

func newSecretsWorld() (*secretsWorld, error) {
	moto, err := testenv.MotoEndpoint()
	if err != nil {
		return nil, err
	}
	w, err := newWorld(false)
	if err != nil {
		return nil, err
	}
	sw := &secretsWorld{world: w, prefix: "rel-" + testenv.RandomSuffix() + "/"}
	sw.sm = secretsmanager.NewFromConfig(testenv.Config(), func(o *secretsmanager.Options) {
		o.BaseEndpoint = aws.String(moto)
		o.RetryMaxAttempts = 1
		o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
			return st.Finalize.Add(middleware.FinalizeMiddlewareFunc("outage", func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
				if sw.down.Load() {
					return middleware.FinalizeOutput{}, middleware.Metadata{}, errors.New("injected: Secrets Manager unreachable")
				}
				return next.HandleFinalize(ctx, in)
			}), middleware.After)
		})
	})
	for name, d := range w.defs {
		if err := sw.put(name, d, true); err != nil {
			return nil, err
		}
	}
	return sw, nil
}

func (sw *secretsWorld) put(name string, d *provider.Definition, create bool) error {
	b, _ := json.Marshal(d)
	var err error
	if create {
		_, err = sw.sm.CreateSecret(bg, &secretsmanager.CreateSecretInput{Name: aws.String(sw.prefix + name), SecretString: aws.String(string(b))})
	} else {
		_, err = sw.sm.PutSecretValue(bg, &secretsmanager.PutSecretValueInput{SecretId: aws.String(sw.prefix + name), SecretString: aws.String(string(b))})
	}
	return err
}

func (sw *secretsWorld) instance(ttl time.Duration) *vend.Vendor {
	reg := registry.NewCached(registry.NewSecretsManager(sw.sm, sw.prefix), registry.CacheOptions{TTL: ttl, StaleFor: 10 * time.Minute})
	return vend.New(reg, &upstream.Client{MaxRetryAfter: -1}, sw.store, vend.Options{L1MaxAge: -1})
}

// secretsDown: Secrets Manager is unreachable while warm instances vend.
func secretsDown(q bool) (row, error) {
	sw, err := newSecretsWorld()
	if err != nil {
		return row{}, err
	}
	defer sw.close()
	warm := []*vend.Vendor{sw.instance(200 * time.Millisecond), sw.instance(200 * time.Millisecond)}
	var t tally
	sw.hammer(bg, &t, warm, 3, req("demo-k2"))
	r := row{Fault: "Secrets Manager down (warm instances, definitions cached 200 ms, stale allowed 10 min)", Expect: "warm instances keep vending; a cold instance is refused with 503"}
	sw.down.Store(true)
	start := time.Now()
	for time.Since(start) < 2*time.Second {
		var s tally
		sw.hammer(bg, &s, warm, 3, req("demo-k2"))
		r.Runs++
		r.Calls += s.calls
		r.Errors += s.errs
		r.Below += s.below
		time.Sleep(50 * time.Millisecond)
	}
	cold := sw.instance(200 * time.Millisecond)
	var c tally
	sw.hammer(bg, &c, []*vend.Vendor{cold}, 3, req("demo-k2"))
	r.Calls += c.calls
	r.Refused += c.errs
	sw.down.Store(false)
	back := time.Now()
	if _, err := cold.Token(bg, req("demo-k2")); err == nil {
		r.Recovery = fmt.Sprintf("%s for a cold instance once it is back", time.Since(back).Round(time.Millisecond))
	}
	r.Upstream = sw.upstream("demo-k2")
	r.Pass = r.Errors == 0 && r.Below == 0 && r.Refused == c.calls && r.Recovery != ""
	return r, nil
}

// rotation: the secret is rotated (provider first, then Secrets Manager)
// while callers vend continuously; a forced refresh then needs the new one.
func rotation(q bool) (row, error) {
	sw, err := newSecretsWorld()
	if err != nil {
		return row{}, err
	}
	defer sw.close()
	vs := []*vend.Vendor{sw.instance(time.Hour), sw.instance(time.Hour), sw.instance(time.Hour)} // cached (old) definitions throughout
	r := row{Fault: "client secret rotated mid-run (definitions cached for 1 h)", Runs: 1, Expect: "no caller errors; the next upstream request uses the new secret after one refusal"}
	var t tally
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, v := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok, err := v.Token(bg, req("demo-k2"))
				t.add(tok, err, time.Now(), 60*time.Second)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if err := sw.sb.Rotate("demo-k2-client", "rotated-secret"); err != nil {
		return r, err
	}
	d := *sw.defs["demo-k2"]
	d.ClientSecret = "rotated-secret"
	if err := sw.put("demo-k2", &d, false); err != nil {
		return r, err
	}
	rotated := time.Now()
	time.Sleep(200 * time.Millisecond)
	tok, err := vs[0].Refresh(bg, req("demo-k2")) // needs the provider now
	if err == nil && sw.sb.Valid(tok.AccessToken) {
		r.Recovery = fmt.Sprintf("%s from rotation to a token under the new secret", time.Since(rotated).Round(time.Millisecond))
	} else {
		r.Errors++
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	r.Calls, r.Below = t.calls+1, t.below
	r.Errors += t.errs
	r.Upstream = sw.upstream("demo-k2")
	r.Pass = r.Errors == 0 && r.Below == 0 && r.Upstream == 3 && r.Recovery != ""
	return r, nil
}
