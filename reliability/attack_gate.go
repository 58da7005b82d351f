package main

// Attack rows of the gate (docs/design.md §11, §12.2): operators, revokes,
// the listing's cursor, the public JWKS route and unverified direct invokes.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

func init() {
	registerAttack(200, "operator reading a token", operatorReadsToken)
	registerAttack(210, "revoke flood", revokeFlood)
	registerAttack(220, "cursor paging across providers", cursorPaging)
	registerAttack(230, "JWKS name probing", jwksProbing)
	registerAttack(240, "unverified direct invoke", unverifiedInvoke)
}

// ledger adds "ledger" (the demo-k2 client): role/payments may have its
// tokens, role/ops only operates it.
func (w *world) ledger() error {
	d := *w.defs["demo-k2"]
	d.Name = "ledger"
	d.AllowedCallers = []string{"arn:aws:iam::" + relAccount + ":role/payments"}
	d.AdminCallers = []string{"arn:aws:iam::" + relAccount + ":role/ops"}
	if err := d.Validate(); err != nil {
		return err
	}
	w.defs["ledger"] = &d
	return nil
}

// gates are n gate instances over one counting store.
func (w *world) gates(n int, cs *countingStore, p authz.Policy) []*gate.Gate {
	var gs []*gate.Gate
	for range n {
		gs = append(gs, gate.New(w.instance(vend.Options{}, cs), registry.NewStatic(w.defs), nil, nil).WithPolicy(p))
	}
	return gs
}

// operatorReadsToken: the operator of a provider it may not vend asks for
// the token on every route it has (GET, forced refresh, rejected) on 4
// instances at once.
func operatorReadsToken(q bool) (attackRow, error) {
	w, err := newWorld(false)
	if err != nil {
		return attackRow{}, err
	}
	defer w.close()
	if err := w.ledger(); err != nil {
		return attackRow{}, err
	}
	n := 600
	if q {
		n = 60
	}
	cs := &countingStore{Store: w.store}
	gs := w.gates(4, cs, authz.Policy{Accounts: []string{relAccount}})
	ops := as("ops", identity.PathAPI)
	r := attackRow{Attempts: n, Expect: "no token: GET and rejected refused before any store read; forced refreshes renew (≤ 1 upstream request per 30 s) and answer without the token"}
	var leaked, refused atomic.Int64
	var wg sync.WaitGroup
	req := vend.Request{Provider: "ledger", MinTTL: -1}
	for i := range n {
		wg.Go(func() {
			g := gs[i%len(gs)]
			var t vend.Token
			var err error
			switch i % 3 {
			case 0:
				t, err = g.Token(ops, req)
			case 1:
				t, err = g.Refresh(ops, req)
			default:
				t, err = g.Rejected(ops, req, strings.Repeat("ab", 32))
			}
			if t.AccessToken != "" {
				leaked.Add(1)
			}
			if err != nil {
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	r.Leaked, r.Refused, r.Upstream, r.StoreOps = int(leaked.Load()), int(refused.Load()), w.upstream("demo-k2"), int(cs.n.Load())
	// Every GET and rejected is refused; refreshes beyond the first wait
	// out the 30 s limit or get the renewed key, without its token.
	r.Pass = r.Refused >= 2*n/3 && r.Upstream <= 1
	return r, nil
}

// revokeFlood: an operator (or a stolen operator credential) revokes one
// key over and over, on 4 instances at once.
func revokeFlood(q bool) (attackRow, error) {
	w, err := newWorld(false)
	if err != nil {
		return attackRow{}, err
	}
	defer w.close()
	if err := w.ledger(); err != nil {
		return attackRow{}, err
	}
	n := 400
	if q {
		n = 40
	}
	cs := &countingStore{Store: w.store}
	gs := w.gates(4, cs, authz.Policy{Accounts: []string{relAccount}})
	req := vend.Request{Provider: "ledger", MinTTL: -1}
	if _, err := gs[0].Token(as("payments", identity.PathAPI), req); err != nil {
		return attackRow{}, err
	}
	ops, before := as("ops", identity.PathAPI), cs.n.Load()
	var refused atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := gs[i%len(gs)].Revoke(ops, req); err != nil {
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	revokes := w.sb.Stats().Revokes[w.defs["demo-k2"].ClientID]
	r := attackRow{Attempts: n, Refused: int(refused.Load()), Upstream: revokes, StoreOps: int(cs.n.Load() - before),
		Expect: "one revoke lands (one upstream revocation: the upstream column), the rest are told to retry after 30 s; no token returned"}
	r.Pass = revokes == 1 && r.Refused == n-1
	return r, nil
}

// cursorPaging: a caller who may list only the open providers pages the
// listing one record at a time, reads its cursors, and alters them (and
// tries another caller's) to reach the restricted provider's records.
func cursorPaging(q bool) (attackRow, error) {
	w, err := newWorld(false)
	if err != nil {
		return attackRow{}, err
	}
	defer w.close()
	if err := w.ledger(); err != nil {
		return attackRow{}, err
	}
	keys := 30
	if q {
		keys = 8
	}
	v := w.instance(vend.Options{}, nil)
	provs := registry.NewStatic(w.defs)
	g := gate.New(v, provs, nil, nil).WithPolicy(authz.Policy{Accounts: []string{relAccount}})
	payer := as("payments", identity.PathAPI)
	for i := range keys {
		if _, err := g.Token(payer, vend.Request{Provider: "ledger", Scope: fmt.Sprint("s", i), MinTTL: -1}); err != nil {
			return attackRow{}, err
		}
	}
	h := httpapi.New(g, provs, nil, nil)
	get := func(ctx context.Context, target string) (int, map[string]any) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", target, nil).WithContext(ctx))
		var m map[string]any
		json.Unmarshal(rec.Body.Bytes(), &m)
		return rec.Code, m
	}
	r := attackRow{Expect: "no page lists ledger, no cursor decodes to a record key, every altered or borrowed cursor refused 400 invalid_request"}
	_, theirs := get(payer, "/v1/providers?limit=1")
	borrowed, _ := theirs["next_cursor"].(string)
	reports := as("reports", identity.PathAPI)
	cursor := ""
	for page := 0; page < keys+10; page++ {
		target := "/v1/providers?limit=1"
		if cursor != "" {
			target += "&cursor=" + cursor
		}
		code, body := get(reports, target)
		r.Attempts++
		if code != 200 {
			return r, fmt.Errorf("page %d: %d %v", page, code, body)
		}
		if strings.Contains(fmt.Sprint(body["providers"]), "ledger") {
			r.Leaked++
		}
		next, _ := body["next_cursor"].(string)
		if next == "" {
			break
		}
		// A record key, or any provider's name, readable in the cursor.
		if raw, err := base64.RawURLEncoding.DecodeString(next); err == nil {
			for _, k := range []string{"token#", "keys#", "cooldown#", "ledger", "demo-"} {
				if strings.Contains(string(raw), k) {
					r.Leaked++
					break
				}
			}
		}
		raw, _ := base64.RawURLEncoding.DecodeString(next)
		raw[len(raw)/2] ^= 0x20
		for _, bad := range []string{base64.RawURLEncoding.EncodeToString(raw), base64.RawURLEncoding.EncodeToString([]byte("token#ledger#s1")), borrowed} {
			r.Attempts++
			if code, body := get(reports, "/v1/providers?limit=1&cursor="+bad); code == 400 && body["error"] == "invalid_request" {
				r.Refused++
			} else if strings.Contains(fmt.Sprint(body["providers"]), "ledger") {
				r.Leaked++
			}
		}
		cursor = next
	}
	r.Pass = r.Leaked == 0 && r.Refused == (r.Attempts-1)/4*3 && borrowed != ""
	return r, nil
}

// countingSource counts definition reads (Secrets Manager GetSecretValue
// calls, in AWS).
type countingSource struct {
	defs  map[string]*provider.Definition
	reads atomic.Int64
}

func (c *countingSource) Get(_ context.Context, name string) (*provider.Definition, error) {
	c.reads.Add(1)
	if d, ok := c.defs[name]; ok {
		return d, nil
	}
	return nil, fmt.Errorf("%w: %q", provider.ErrNotFound, name)
}

func (c *countingSource) Names(context.Context) ([]string, error) { return nil, registry.ErrListingOff }

type noKeys struct{}

func (noKeys) JWKS(context.Context, *provider.Definition) ([]byte, error) {
	return []byte(`{"keys":[]}`), nil
}

// jwksProbing: the route without IAM asked for thousands of invented names
// and for every real provider that signs nothing, twice.
func jwksProbing(q bool) (attackRow, error) {
	w, err := newWorld(false)
	if err != nil {
		return attackRow{}, err
	}
	defer w.close()
	names := 5000
	if q {
		names = 1000
	}
	src := &countingSource{defs: w.defs}
	answer := w.jwksProber(src)
	r := attackRow{Expect: "one identical 404 for unknown names and providers that sign nothing (leaked: answers that tell them apart); one definition read per new name, none for a name asked again within 30 s (store ops: definition reads); the not-found cache bounded (1024)"}
	ref := answer("no-such-provider")
	var real []string
	for n := range w.defs {
		real = append(real, n)
	}
	for round := range 2 {
		for _, n := range real {
			r.Attempts++
			if answer(n) != ref {
				r.Leaked++
			} else {
				r.Refused++
			}
		}
		for i := range names / 2 {
			r.Attempts++
			if answer(fmt.Sprintf("probe-%d-%d", round, i)) == ref {
				r.Refused++
			} else {
				r.Leaked++
			}
		}
	}
	r.StoreOps = int(src.reads.Load())
	r.Pass = r.Leaked == 0 && r.StoreOps <= names+len(real)+1
	return r, nil
}

// unverifiedInvoke: direct invokes of an unrestricted provider with no
// proof, a garbage proof and a proof for another vendor, by default policy.
func unverifiedInvoke(q bool) (attackRow, error) {
	w, err := newWorld(false)
	if err != nil {
		return attackRow{}, err
	}
	defer w.close()
	n := 900
	if q {
		n = 90
	}
	cs := &countingStore{Store: w.store}
	g := w.gates(1, cs, authz.Policy{Accounts: []string{relAccount}})[0]
	h := lambda.NewHandler(lambdafn.Invoke(g, &identity.Verifier{Endpoint: "https://sts.us-east-1.amazonaws.com", VendorID: "rel"}, quietLog(), nil))
	events := []string{
		`{"provider":"demo-k2"}`,
		`{"provider":"demo-k2","identity":{"iam_http_request_method":"POST","iam_request_url":"%%%","iam_request_body":"","iam_request_headers":""}}`,
		`{"provider":"demo-mobi","identity":null}`,
	}
	r := attackRow{Attempts: n, Expect: "every invoke refused CallerNotAllowed (no_identity / proof_malformed); 0 store operations, 0 upstream requests"}
	var leaked, refused atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			out, err := h.Invoke(bg, []byte(events[i%len(events)]))
			if err == nil && strings.Contains(string(out), "access_token") {
				leaked.Add(1)
			}
			if wire.ErrorType(err) == "CallerNotAllowed" {
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	r.Leaked, r.Refused, r.StoreOps = int(leaked.Load()), int(refused.Load()), int(cs.n.Load())
	r.Upstream = w.upstream("demo-k2") + w.upstream("demo-mobi")
	r.Pass = r.Refused == n && r.StoreOps == 0 && r.Upstream == 0
	return r, nil
}

// jwksProber serves the public JWKS route over src (cached as in AWS) and
// returns what an unauthenticated prober sees of one name: status, headers
// and body with the name itself blanked, so two answers compare equal
// exactly when they cannot be told apart.
func (w *world) jwksProber(src registry.Source) func(name string) string {
	provs := registry.NewCached(src, registry.CacheOptions{})
	h := httpapi.New(gate.New(w.instance(vend.Options{}, nil), provs, nil, nil), provs, nil, nil).WithJWKS(noKeys{})
	return func(name string) string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/providers/"+name+"/jwks.json", nil))
		b, _ := io.ReadAll(rec.Body)
		return fmt.Sprint(rec.Code, rec.Header(), strings.ReplaceAll(string(b), name, "NAME"))
	}
}
