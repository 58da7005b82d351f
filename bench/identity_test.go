package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

// BenchmarkIdentityVend is section 10's hot path without emulators: a vend
// by direct invoke through the gate, for a provider without allowed_callers
// that needs no identity (the ALLOW_UNVERIFIED_CALLERS opt-in: no proof in
// the event, none checked) and for a restricted one with a proof verified
// before (STS is a stand-in answering GetCallerIdentity; the cached path
// never reaches it). The difference between the two is what a verified
// caller costs per vend (issue 27: at most 5 µs).
func BenchmarkIdentityVend(b *testing.B) {
	const arn = "arn:aws:iam::123456789012:user/bench"
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>` + arn + `</Arn><Account>123456789012</Account></GetCallerIdentityResult></GetCallerIdentityResponse>`))
	}))
	defer sts.Close()
	sb := sandbox.New()
	up := httptest.NewServer(sb.Handler())
	defer up.Close()
	defs := sandbox.DemoProviders(sb, up.URL)
	pay := *defs["demo-k2"]
	pay.Name, pay.AllowedCallers = "payments", []string{arn}
	if err := pay.Validate(); err != nil {
		b.Fatal(err)
	}
	defs["payments"] = &pay
	src := registry.NewStatic(defs)
	core := vend.New(src, vendtest.Client(nil), store.NewMemory(nil), vend.Options{DisableRefreshAhead: true})
	g := gate.New(core, src, slog.New(slog.NewJSONHandler(discard{}, nil)), nil)
	h := lambda.NewHandler(lambdafn.Invoke(g, &identity.Verifier{Endpoint: sts.URL, VendorID: benchVendor}, slog.New(slog.DiscardHandler), nil))
	// The same path, with the opt-in that lets unverified callers have
	// providers without allowed_callers: no identity to check.
	open := gate.New(core, src, slog.New(slog.NewJSONHandler(discard{}, nil)), nil).WithPolicy(authz.Policy{AllowUnverified: true})
	hOpen := lambda.NewHandler(lambdafn.Invoke(open, &identity.Verifier{Endpoint: sts.URL, VendorID: benchVendor}, slog.New(slog.DiscardHandler), nil))
	ctx := context.Background()
	creds := aws.Credentials{AccessKeyID: "AKIDBENCH", SecretAccessKey: "bench"}
	proof, err := identity.Sign(ctx, creds, "us-east-1", sts.URL, benchVendor, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	// A Lambda consumer's proof carries its role's session token (about 1 KB).
	creds.SessionToken = strings.Repeat("IQoJb3JpZ2luX2VjE", 60)
	sessionProof, err := identity.Sign(ctx, creds, "us-east-1", sts.URL, benchVendor, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		h    lambda.Handler
		ev   map[string]any
	}{
		{"unrestricted", hOpen, map[string]any{"provider": "demo-k2"}},
		{"cached-proof", h, map[string]any{"provider": "payments", "identity": proof}},
		{"cached-proof-with-session-token", h, map[string]any{"provider": "payments", "identity": sessionProof}},
	} {
		raw, _ := json.Marshal(c.ev)
		if _, err := c.h.Invoke(ctx, raw); err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.h.Invoke(ctx, raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
