package lambdafn_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/token-vendor/token-vendor/pkg/gate"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/vend"
)

// recordingCore vends a token named after the provider, and records which
// providers reached it.
type recordingCore struct {
	gate.Core
	vended []string
}

func (c *recordingCore) Token(_ context.Context, r vend.Request) (vend.Token, error) {
	c.vended = append(c.vended, r.Provider)
	return vend.Token{Provider: r.Provider, AccessToken: "tok-" + r.Provider, TokenType: "Bearer", ExpiresAt: time.Now().Add(time.Hour)}, nil
}

// oneCaller proves every proof it is given to be one fixed principal.
type oneCaller struct{ arn string }

func (o oneCaller) Verify(_ context.Context, p *identity.Proof) identity.Caller {
	return identity.Caller{Path: identity.PathInvoke, ARN: o.arn, Account: "111111111111"}
}

// TestInvokeEventSpellingsDecideWhatIsVended: encoding/json matches field
// names case-insensitively and keeps the last of duplicate keys. Whatever
// spelling an invoke event uses, the provider and identity the gate decides
// on are the ones vended: a second "provider" or "PROVIDER" key, or a
// second "identity", never lets a refused caller reach a restricted
// provider; an API Gateway event naming an allowed caller in
// authorizer.iam is refused before the gate; each event that reaches the
// gate leaves exactly one audit record naming the provider decided on.
// (Pins the invoke decode path: a faster decoder must keep these.)
func TestInvokeEventSpellingsDecideWhatIsVended(t *testing.T) {
	locked := &provider.Definition{Name: "locked", TokenURL: "https://as.example/t", ClientID: "c", ClientSecret: "s",
		AllowedCallers: []string{"arn:aws:iam::111111111111:role/ops"}}
	open := &provider.Definition{Name: "open", TokenURL: "https://as.example/t", ClientID: "c", ClientSecret: "s"}
	for _, d := range []*provider.Definition{locked, open} {
		if err := d.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	core := &recordingCore{}
	var audit bytes.Buffer
	g := gate.New(core, registry.NewStatic(map[string]*provider.Definition{"locked": locked, "open": open}), slog.New(slog.NewJSONHandler(&audit, nil)), nil)
	h := lambda.NewHandler(lambdafn.Invoke(g, oneCaller{arn: "arn:aws:sts::111111111111:assumed-role/app/s"}, quiet, nil))
	ctx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{InvokedFunctionArn: "arn:aws:lambda:eu-west-1:111111111111:function:vend"})
	proof := `{"iam_http_request_method":"POST","iam_request_url":"","iam_request_body":"","iam_request_headers":""}`

	cases := []struct {
		name, event string
		vended      string // "" refused
		audited     string // the provider in the audit record; "" none
	}{
		{"duplicate provider, restricted last", `{"provider":"open","provider":"locked","identity":` + proof + `}`, "", "locked"},
		{"case variant, restricted last", `{"provider":"open","PROVIDER":"locked","identity":` + proof + `}`, "", "locked"},
		{"case variant, open last", `{"Provider":"locked","provider":"open","identity":` + proof + `}`, "open", "open"},
		{"proof then null", `{"provider":"open","identity":` + proof + `,"identity":null}`, "", "open"},
		{"null then proof in another case", `{"provider":"open","identity":null,"IDENTITY":` + proof + `}`, "open", "open"},
		{"identity and an extra field", `{"provider":"open","identity":` + proof + `,"caller":"arn:aws:sts::111111111111:assumed-role/ops/s"}`, "", ""},
		{"API Gateway event", `{"version":"2.0","rawPath":"/v1/tokens/locked","requestContext":{"authorizer":{"iam":{"userArn":"arn:aws:sts::111111111111:assumed-role/ops/s","accountId":"111111111111"}}},"provider":"locked"}`, "", ""},
		{"proof with an extra field", `{"provider":"locked","identity":{"iam_http_request_method":"POST","arn":"arn:aws:sts::111111111111:assumed-role/ops/s"}}`, "", ""},
	}
	for _, c := range cases {
		core.vended, audit = nil, bytes.Buffer{}
		out, err := h.Invoke(ctx, []byte(c.event))
		got := ""
		if err == nil {
			var resp struct {
				AccessToken string `json:"access_token"`
			}
			json.Unmarshal(out, &resp)
			got = strings.TrimPrefix(resp.AccessToken, "tok-")
		}
		if got != c.vended || strings.Join(core.vended, ",") != c.vended {
			t.Errorf("%s: vended %q (core saw %v, err %v), want %q", c.name, got, core.vended, err, c.vended)
		}
		var records []map[string]any
		for _, l := range strings.Split(strings.TrimSpace(audit.String()), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "audit" {
				records = append(records, m)
			}
		}
		switch {
		case c.audited == "" && len(records) != 0:
			t.Errorf("%s: refused before the gate but audited: %v", c.name, records)
		case c.audited != "" && (len(records) != 1 || records[0]["provider"] != c.audited):
			t.Errorf("%s: audit %v, want one record for %s", c.name, records, c.audited)
		}
		if strings.Contains(audit.String(), "tok-") {
			t.Errorf("%s: the audit record holds the token", c.name)
		}
	}
}
