// Package lambdafn adapts the vendor to Lambda: API Gateway HTTP API
// (payload v2) onto the shared HTTP handler, direct invocation by other
// Lambdas, and the scheduled refresher.
package lambdafn

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/token-vendor/token-vendor/pkg/authz"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// maxEventBody bounds what the adapter accepts; API Gateway allows 10 MB.
const maxEventBody = 64 << 10

// APIGateway serves HTTP API payload v2 events with h.
func APIGateway(h http.Handler) func(context.Context, events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error) {
	return func(ctx context.Context, e events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error) {
		body := []byte(e.Body)
		if e.IsBase64Encoded {
			b, err := base64.StdEncoding.DecodeString(e.Body)
			if err != nil {
				return jsonResponse(http.StatusBadRequest, wire.ErrorResponse{Error: "invalid_request", ErrorDescription: "body is not valid base64"}), nil
			}
			body = b
		}
		if len(body) > maxEventBody {
			return jsonResponse(http.StatusRequestEntityTooLarge, wire.ErrorResponse{Error: "invalid_request", ErrorDescription: "body too large"}), nil
		}
		method := e.RequestContext.HTTP.Method
		path := e.RawPath
		if path == "" {
			path = e.RequestContext.HTTP.Path
		}
		target := path
		if e.RawQueryString != "" {
			target += "?" + e.RawQueryString
		}
		req, err := http.NewRequestWithContext(ctx, method, "https://api.invalid"+target, bytes.NewReader(body))
		if err != nil {
			return jsonResponse(http.StatusBadRequest, wire.ErrorResponse{Error: "invalid_request", ErrorDescription: "malformed request line"}), nil
		}
		for k, v := range e.Headers {
			req.Header.Set(k, v)
		}
		req = req.WithContext(identity.NewContext(ctx, callerOf(e.RequestContext)))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		resp := events.APIGatewayV2HTTPResponse{StatusCode: rec.Code, Headers: map[string]string{}, Body: rec.Body.String()}
		for k, vs := range rec.Header() {
			resp.Headers[k] = strings.Join(vs, ", ")
		}
		return resp, nil
	}
}

// callerOf is the identity Lambda's front door verified: API Gateway's
// AWS_IAM authorization or a function URL's AuthType AWS_IAM put the signer
// in requestContext.authorizer.iam. Only they can invoke the api function
// (its resource policy); see docs/design.md §11 for that trust boundary.
func callerOf(rc events.APIGatewayV2HTTPRequestContext) identity.Caller {
	path := identity.PathAPI
	if strings.Contains(rc.DomainName, ".lambda-url.") {
		path = identity.PathURL
	}
	if rc.Authorizer == nil || rc.Authorizer.IAM == nil {
		return identity.Anonymous(path, "the request carries no IAM identity (is the route's authorization AWS_IAM?)")
	}
	iam := rc.Authorizer.IAM
	return identity.FromIAM(path, iam.UserARN, iam.AccountID, iam.PrincipalOrgID)
}

func jsonResponse(status int, body any) events.APIGatewayV2HTTPResponse {
	b, _ := json.Marshal(body)
	return events.APIGatewayV2HTTPResponse{StatusCode: status, Body: string(b),
		Headers: map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache"}}
}

// Vendor is the core as the invoke handler uses it.
type Vendor interface {
	Token(ctx context.Context, req vend.Request) (vend.Token, error)
	Rejected(ctx context.Context, req vend.Request, sha256hex string) (vend.Token, error)
}

// InvokeEvent is the direct-invoke request.
type InvokeEvent struct {
	Provider            string `json:"provider"`
	Scope               string `json:"scope"`
	Resource            string `json:"resource"`
	Audience            string `json:"audience"`
	MinTTL              *int64 `json:"min_ttl"`
	RejectedTokenSHA256 string `json:"rejected_token_sha256"`
	// DPoPHTM, DPoPHTU and DPoPNonce ask for a DPoP proof for the request
	// the caller is about to make with a DPoP-bound token (docs/design.md §5).
	DPoPHTM   string `json:"dpop_htm"`
	DPoPHTU   string `json:"dpop_htu"`
	DPoPNonce string `json:"dpop_nonce"`
	// DPoPCount asks for that many proofs (1 to 8) at once, answered in
	// dpop_proofs: a consumer's pool, each proof used once.
	DPoPCount *int `json:"dpop_count"`
	// Identity proves who invokes: a signed sts:GetCallerIdentity request
	// (docs/design.md §11). Without it the caller has no identity.
	Identity *identity.Proof `json:"identity"`
}

// Verifier checks identity proofs (identity.Verifier).
type Verifier interface {
	Verify(ctx context.Context, p *identity.Proof) identity.Caller
}

// Invoke handles direct invocation: event -> token JSON, failures as errors
// whose type names (InvalidRequest, …) become the caller's errorType.
// The caller is whoever the event's identity proof proves (verified by
// proofs; nil verifies none).
func Invoke(v Vendor, proofs Verifier, log *slog.Logger, now func() time.Time) InvokeFunc {
	if now == nil {
		now = time.Now
	}
	return func(ctx context.Context, raw json.RawMessage) (wire.TokenResponse, error) {
		var ev *InvokeEvent // set by decodeEvent, first thing
		var proof string
		var spares []string
		t, err := func() (vend.Token, error) {
			if err := decodeEvent(ctx, raw, &ev); err != nil {
				return vend.Token{}, err
			}
			if ev.Provider == "" {
				return vend.Token{}, wire.Invalid("provider is required")
			}
			req := vend.Request{Provider: ev.Provider, Scope: ev.Scope, Resource: ev.Resource, Audience: ev.Audience, MinTTL: -1}
			if ev.MinTTL != nil {
				if *ev.MinTTL < 0 || *ev.MinTTL > int64(vend.MaxMinTTL/time.Second) {
					return vend.Token{}, wire.Invalid("min_ttl must be a whole number of seconds from 0 to %d", int64(vend.MaxMinTTL/time.Second))
				}
				req.MinTTL = time.Duration(*ev.MinTTL) * time.Second
			}
			caller := identity.Anonymous(identity.PathInvoke, "direct invoke carries no identity proof (a signed sts:GetCallerIdentity request in \"identity\")")
			if ev.Identity != nil && proofs != nil {
				caller = proofs.Verify(ctx, ev.Identity)
			}
			ctx := identity.NewContext(ctx, caller)
			if ev.DPoPHTM != "" || ev.DPoPHTU != "" || ev.DPoPNonce != "" || ev.DPoPCount != nil {
				return invokeProof(ctx, v, *ev, req, &proof, &spares)
			}
			if ev.RejectedTokenSHA256 != "" {
				return v.Rejected(ctx, req, ev.RejectedTokenSHA256)
			}
			return v.Token(ctx, req)
		}()
		if err != nil {
			p := wire.Classify(err, ev.Provider)
			level := slog.LevelInfo
			if p.Internal {
				level = slog.LevelError
			}
			log.Log(ctx, level, "invoke failed", "provider", ev.Provider, "error_type", p.Type, "error", err)
			return wire.TokenResponse{}, p.LambdaError()
		}
		log.InfoContext(ctx, "invoke", "provider", t.Provider, "cache", t.Source)
		resp := wire.NewTokenResponse(t, now())
		resp.DPoPProof = proof
		resp.DPoPProofs = spares
		return resp, nil
	}
}

// Refresher is the core as the refresher uses it.
type Refresher interface {
	RefreshDue(ctx context.Context, o vend.RefreshOptions) (vend.RefreshResult, error)
}

// Dispatcher starts one shard's run as an invocation of its own, queued
// on Lambda's asynchronous engine (fanout.Invoker).
type Dispatcher interface {
	Dispatch(ctx context.Context, event []byte) error
}

// manualRefresh is the operator's event: {"providers":["kopokopo"],"force":true}.
type manualRefresh struct {
	Providers []string `json:"providers"`
	Force     bool     `json:"force"`
}

// shardRun is the event a fanned-out scheduled run sends each shard.
type shardRun struct {
	Shard *int `json:"shard"`
	// Run is the dispatching invocation's request id, for the logs.
	Run string `json:"run"`
}

// Refresh handles the EventBridge schedule (renew what is due before the
// next run, interval apart), a shard's share of a fanned-out run, and the
// manual event. With a dispatcher, a scheduled run reads nothing itself: it
// starts one asynchronous invocation per refresh-index shard, and each
// renews its shard under the shard's lease. A shard whose dispatch fails is
// renewed by the scheduled run itself.
func Refresh(r Refresher, interval time.Duration, d Dispatcher, log *slog.Logger) func(context.Context, json.RawMessage) (vend.RefreshResult, error) {
	return func(ctx context.Context, raw json.RawMessage) (vend.RefreshResult, error) {
		opts := vend.RefreshOptions{Horizon: interval}
		var probe map[string]json.RawMessage
		if err := json.Unmarshal(raw, &probe); err != nil {
			return vend.RefreshResult{}, wire.Classify(wire.Invalid("event must be a JSON object"), "").LambdaError()
		}
		dispatched := 0
		_, scheduled := probe["detail-type"]
		_, isShard := probe["shard"]
		switch {
		case scheduled && d != nil:
			failed := dispatchShards(ctx, d, log)
			dispatched = store.Shards - len(failed)
			if len(failed) == 0 {
				log.InfoContext(ctx, "refresh run dispatched", "shards", dispatched)
				return vend.RefreshResult{Dispatched: dispatched}, nil
			}
			opts.Shards, opts.Exclusive = failed, true
		case scheduled:
			opts.Exclusive = true
		case isShard:
			var ev shardRun
			if err := strictDecode(raw, &ev); err != nil {
				return vend.RefreshResult{}, wire.Classify(err, "").LambdaError()
			}
			if ev.Shard == nil || *ev.Shard < 0 || *ev.Shard >= store.Shards {
				return vend.RefreshResult{}, wire.Classify(wire.Invalid("shard: want a whole number from 0 to %d", store.Shards-1), "").LambdaError()
			}
			opts.Shards, opts.Exclusive = []int{*ev.Shard}, true
			log = log.With("shard", *ev.Shard, "run", ev.Run)
		default:
			var m manualRefresh
			if err := strictDecode(raw, &m); err != nil {
				return vend.RefreshResult{}, wire.Classify(err, "").LambdaError()
			}
			// Under its providers' shard leases like any run: a provider's cap
			// and rate bind every run together.
			opts.Providers, opts.Force, opts.Exclusive = m.Providers, m.Force, true
			// An operator's run: through the gate (when r is one) as the
			// refresher path, audited. Lambda does not say who invoked.
			ctx = identity.NewContext(ctx, identity.Caller{Path: authz.PathRefresher, Problem: identity.NoIdentity,
				Detail: "the refresher's manual event (whoever may invoke the refresher function; Lambda does not name the invoker)"})
		}
		got, err := r.RefreshDue(ctx, opts)
		got.Dispatched = dispatched
		if err != nil {
			log.ErrorContext(ctx, "refresh run failed", "error", err)
			return got, wire.Classify(err, "").LambdaError()
		}
		log.InfoContext(ctx, "refresh run", "due", got.Due, "refreshed", got.Refreshed, "failed", got.Failed, "skipped", got.Skipped,
			"deferred", got.Deferred, "retired", got.Retired, "lag_s", got.LagSeconds, "shards_busy", got.ShardsBusy, "dispatched", got.Dispatched)
		return got, nil
	}
}

// dispatchShards starts every shard's run and returns the shards it could
// not start.
func dispatchShards(ctx context.Context, d Dispatcher, log *slog.Logger) []int {
	run := ""
	if lc, ok := lambdacontext.FromContext(ctx); ok {
		run = lc.AwsRequestID
	}
	errs := make([]error, store.Shards)
	var wg sync.WaitGroup
	for sh := range store.Shards {
		wg.Go(func() {
			ev, _ := json.Marshal(shardRun{Shard: &sh, Run: run})
			errs[sh] = d.Dispatch(ctx, ev)
		})
	}
	wg.Wait()
	var failed []int
	for sh, err := range errs {
		if err != nil {
			log.WarnContext(ctx, "refresh: shard not dispatched; this run renews it", "shard", sh, "error", err)
			failed = append(failed, sh)
		}
	}
	return failed
}

func strictDecode(raw json.RawMessage, v any) error {
	if len(raw) > maxEventBody {
		return wire.Invalid("event larger than %d bytes", maxEventBody)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if strings.HasPrefix(err.Error(), "json: unknown field ") {
			return wire.Invalid("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		}
		return wire.Invalid("event is not the expected JSON object (%s)", jsonProblem(err))
	}
	if dec.More() {
		return wire.Invalid("trailing data after the event")
	}
	return nil
}

func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %s must be a %s", te.Field, te.Type)
	}
	return "malformed JSON"
}
