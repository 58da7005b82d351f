// Package hygiene plants canary secrets and tokens, drives every entry point
// through success and failure, and checks the canaries never leave where
// they belong: not in logs, metrics, error bodies, Lambda errors, listings
// or panics.
package hygiene

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/client"
	"github.com/token-vendor/token-vendor/pkg/extension"
	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
	"github.com/token-vendor/token-vendor/pkg/obs"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/wire"
	"github.com/token-vendor/token-vendor/tests/ststandin"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

const (
	canaryHMAC         = "CANARY-HMAC-KEY-client-secret-jwt-0123456789"
	canaryProofSession = "CANARY-PROOF-SESSION-TOKEN-5e1"
	canarySecret       = "CANARY-SECRET-7f3a+/=x"
	canaryToken        = "CANARY-TOKEN-91bd"
)

// leakyProvider issues the canary token and, when told, fails in ways that
// echo what it received: the worst a real provider could do.
type leakyProvider struct {
	mu         sync.Mutex
	mode       string
	assertions int // requests that carried a client assertion
}

func (p *leakyProvider) set(mode string) { p.mu.Lock(); p.mode = mode; p.mu.Unlock() }

func (p *leakyProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	p.mu.Lock()
	mode := p.mode
	if strings.Contains(string(body), "client_assertion=eyJ") {
		p.assertions++
	}
	p.mu.Unlock()
	echo := r.URL.RawQuery + " " + string(body) + " " + r.Header.Get("Authorization") + " " + r.Header.Get("DPoP")
	switch mode {
	case "echo401":
		w.WriteHeader(401)
		raw := " raw=" + canarySecret // the client's secret, echoed as it arrived
		if strings.Contains(echo, "client-jwt") || strings.Contains(echo, "client-mtls") || strings.Contains(echo, "client-hs") || strings.Contains(echo, "client-wi") {
			raw = "" // these clients send no secret; their assertion is in the echo
		}
		json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client", "error_description": "bad credentials: " + echo + raw})
	case "html500":
		w.WriteHeader(500)
		io.WriteString(w, "<html>stack trace: "+echo+"</html>")
	case "echo400code":
		w.WriteHeader(400)
		json.NewEncoder(w).Encode(map[string]string{"error": canarySecret})
	case "tokenInError":
		w.WriteHeader(200)
		io.WriteString(w, `{"access_token": "`+canaryToken+`" "broken`)
	default:
		w.Header().Set("Content-Type", "application/json")
		typ := "Bearer"
		if r.Header.Get("DPoP") != "" {
			typ = "DPoP" // a DPoP-bound token: consumers then get proofs
		}
		json.NewEncoder(w).Encode(map[string]any{"access_token": canaryToken, "token_type": typ, "expires_in": 3600})
	}
}

func TestCanariesNeverLeak(t *testing.T) {
	lp := &leakyProvider{}
	srv := httptest.NewServer(lp)
	defer srv.Close()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + l.Addr().String() + "/token"
	l.Close()
	defs := map[string]*provider.Definition{}
	for name, d := range map[string]*provider.Definition{
		"post":  {TokenURL: srv.URL + "/t", AuthMethod: provider.AuthPost, RevokeURL: srv.URL + "/r"},
		"basic": {TokenURL: srv.URL + "/t", AuthMethod: provider.AuthBasic},
		"query": {TokenURL: srv.URL + "/t?tenant=1", AuthMethod: provider.AuthQuery},
		"down":  {TokenURL: dead, AuthMethod: provider.AuthQuery},
	} {
		d.Name, d.ClientID, d.ClientSecret = name, "client-"+name, canarySecret
		if err := d.Validate(); err != nil {
			t.Fatal(err)
		}
		defs[name] = d
	}
	// Key material: a private_key_jwt provider (its assertions go to the
	// leaky provider, which echoes them) and a tls_client_auth one.
	jwtKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(jwtKey)
	jwtPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	certPEM, keyPEM := selfSigned(t)
	dpopKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dpopDER, _ := x509.MarshalPKCS8PrivateKey(dpopKey)
	dpopPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: dpopDER}))
	for name, d := range map[string]*provider.Definition{
		"jwt": {TokenURL: srv.URL + "/t", AuthMethod: provider.AuthPrivateKeyJWT, PrivateKey: jwtPEM, RevokeURL: srv.URL + "/r",
			SigningCertificate: certOf(t, jwtKey), AssertionX5T: true}, // x5t#S256 and x5t headers too
		"mtls": {TokenURL: srv.URL + "/t", AuthMethod: provider.AuthTLS, ClientCertificate: certPEM, ClientKey: keyPEM},
		// client_secret_jwt: the HMAC key is a secret that never travels.
		"hs": {TokenURL: srv.URL + "/t", AuthMethod: provider.AuthClientSecretJWT, ClientSecret: canaryHMAC, RevokeURL: srv.URL + "/r"},
		// aws_web_identity: an AWS-issued JWT (from the STS stand-in) as the assertion.
		"wi": {TokenURL: srv.URL + "/t", AuthMethod: provider.AuthAWSWebIdentity},
		// DPoP: proofs (JWS, caught by the eyJhbGciOi canary) to the
		// provider, which echoes them, and to consumers, where they belong.
		"dpop": {TokenURL: srv.URL + "/t", AuthMethod: provider.AuthPost, ClientSecret: canarySecret, DPoPPrivateKey: dpopPEM},
	} {
		d.Name, d.ClientID = name, "client-"+name
		if err := d.Validate(); err != nil {
			t.Fatal(err)
		}
		defs[name] = d
	}
	keyCanaries := []string{pemBody(jwtPEM), pemBody(keyPEM), pemBody(dpopPEM), "eyJhbGciOi", canaryHMAC} // the keys' bodies; any JWS header (an assertion)

	// A provider only one role may have, and an STS that refuses every proof
	// echoing what it was sent: the audit records and refusals of direct
	// invokes carrying canary proofs must hold neither proof nor credential.
	restricted := *defs["post"]
	restricted.Name, restricted.AllowedCallers = "restricted", []string{"arn:aws:iam::123456789012:role/payments"}
	if err := restricted.Validate(); err != nil {
		t.Fatal(err)
	}
	defs["restricted"] = &restricted
	echoSTS := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(403)
		fmt.Fprintf(w, "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>%s %s</Message></Error></ErrorResponse>",
			r.Header.Get("Authorization"), r.Header.Get("X-Amz-Security-Token"))
	}))
	defer echoSTS.Close()
	proof, err := identity.Sign(context.Background(), aws.Credentials{AccessKeyID: "ASIACANARYKEYID", SecretAccessKey: canarySecret, SessionToken: canaryProofSession},
		"us-east-1", echoSTS.URL, "tv-hygiene", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	proofJSON, _ := json.Marshal(proof)
	var logs, metrics bytes.Buffer
	cfg := app.Defaults()
	cfg.VendorID, cfg.STSEndpoint = "tv-hygiene", echoSTS.URL
	cfg.StaticProviders = defs
	cfg.L1MaxAge = -1
	cfg.UpstreamAttempts = 1
	cfg.MetricsOutput = &metrics
	// The extension here invokes without proofs; what is checked is that
	// nothing leaks, granted or refused.
	cfg.AllowUnverifiedCallers = true
	standin, err := ststandin.Start("arn:aws:iam::123456789012:role/vendor")
	if err != nil {
		t.Fatal(err)
	}
	defer standin.Close()
	stsClient := sts.NewFromConfig(testenv.Config(), func(o *sts.Options) { o.BaseEndpoint = aws.String(standin.URL) })
	a, err := app.New(cfg, app.Clients{STS: stsClient}, obs.NewLogger(&logs, "debug"))
	if err != nil {
		t.Fatal(err)
	}
	var outside bytes.Buffer // everything a caller sees, except token bodies
	api := lambda.NewHandler(lambdafn.APIGateway(a.Handler))
	inv := lambda.NewHandler(lambdafn.Invoke(a.Gate, a.Proofs, a.Log, nil))
	ctx := context.Background()
	var extLogs bytes.Buffer
	extCache := extension.New(client.NewLambdaInvoker(invokeAPI{inv}, "vend"), "session", obs.NewLogger(&extLogs, "debug"))
	// The extension with a DPoP proof pool (dpop_count to the vend function).
	extPool := extension.New(client.NewLambdaInvoker(invokeAPI{inv}, "vend"), "session", obs.NewLogger(&extLogs, "debug")).WithProofPool(4)

	call := func(method, path, body string) (int, string) {
		ev := events.APIGatewayV2HTTPRequest{RawPath: strings.SplitN(path, "?", 2)[0], Body: body}
		if i := strings.Index(path, "?"); i >= 0 {
			ev.RawQueryString = path[i+1:]
		}
		ev.RequestContext.HTTP.Method = method
		b, _ := json.Marshal(ev)
		out, err := api.Invoke(ctx, b)
		if err != nil {
			outside.WriteString(err.Error())
		}
		var resp events.APIGatewayV2HTTPResponse
		json.Unmarshal(out, &resp)
		for k, v := range resp.Headers {
			outside.WriteString(k + ": " + v + "\n")
		}
		return resp.StatusCode, resp.Body
	}
	dpopProofs := 0
	scenario := func(mode string) {
		lp.set(mode)
		for name := range defs {
			paths := []string{"/v1/tokens/" + name, "/v1/tokens/" + name + "?scope=" + url.QueryEscape(mode)}
			if name == "dpop" {
				paths = append(paths, "/v1/tokens/dpop?dpop_htm=GET&dpop_htu="+url.QueryEscape("https://rs.example/a?q="+canarySecret)+"&dpop_nonce=n1",
					"/v1/tokens/dpop?dpop_htm=GET&dpop_htu=relative") // refused: the error must not echo it
			}
			for _, p := range paths {
				st, body := call("GET", p, "")
				if st == 200 {
					if !strings.Contains(body, canaryToken) {
						t.Fatalf("%s %s: 200 without the token", mode, p)
					}
					continue // a token response is where the token belongs
				}
				outside.WriteString(body)
			}
			for _, r := range []string{"refresh", "revoke"} {
				st, body := call("POST", "/v1/tokens/"+name+"/"+r, "")
				if st != 200 {
					outside.WriteString(body)
				}
			}
			st, body := call("POST", "/v1/tokens/"+name+"/rejected", `{"token_sha256":"`+strings.Repeat("0", 64)+`"}`)
			if st != 200 {
				outside.WriteString(body)
			}
			// The extension layer, relaying the vend function's answers.
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("GET", "/v1/tokens/"+name+"?min_ttl=0", nil)
			req.Header.Set(extension.Header, "session")
			extCache.Handler().ServeHTTP(rec, req)
			if rec.Code != 200 {
				outside.WriteString(rec.Body.String())
			} else if !strings.Contains(rec.Body.String(), canaryToken) {
				t.Fatalf("extension 200 without the token: %s", rec.Body.String())
			}
			events := []string{fmt.Sprintf(`{"provider":%q}`, name), fmt.Sprintf(`{"provider":%q,"identity":%s}`, name, proofJSON)}
			if name == "dpop" {
				events = append(events, `{"provider":"dpop","dpop_htm":"POST","dpop_htu":"https://rs.example/pay"}`,
					`{"provider":"dpop","dpop_htm":"POST","dpop_htu":"https://rs.example/pay","dpop_count":3}`,
					`{"provider":"dpop","dpop_htm":"POST","dpop_htu":"https://rs.example/pay?q=`+canarySecret+`","dpop_count":9}`) // refused
				for _, ec := range []*extension.Cache{extCache, extPool, extPool} { // the second pooled request takes a spare
					rec := httptest.NewRecorder()
					req := httptest.NewRequest("GET", "/v1/tokens/dpop?dpop_htm=GET&dpop_htu=https%3A%2F%2Frs.example%2Fa", nil)
					req.Header.Set(extension.Header, "session")
					ec.Handler().ServeHTTP(rec, req)
					if rec.Code != 200 {
						outside.WriteString(rec.Body.String())
					} else if !strings.Contains(rec.Body.String(), `"dpop_proof":"eyJ`) {
						t.Fatalf("extension proof answer without a proof: %s", rec.Body.String())
					}
					dpopProofs++
				}
			}
			for _, ev := range events {
				out, err := inv.Invoke(ctx, []byte(ev))
				if err != nil {
					outside.WriteString(err.Error())
				} else if !bytes.Contains(out, []byte(canaryToken)) {
					t.Fatalf("invoke ok without the token: %s", out)
				}
			}
		}
	}
	func() {
		defer func() {
			if r := recover(); r != nil {
				outside.WriteString(fmt.Sprint(r))
				t.Errorf("panic: %v", r)
			}
		}()
		for _, mode := range []string{"", "echo401", "html500", "echo400code", "tokenInError", ""} {
			scenario(mode)
		}
	}()
	_, listing := call("GET", "/v1/providers", "")
	outside.WriteString(listing)
	a.Metrics.Flush()

	for what, text := range map[string]string{"logs": logs.String(), "metrics": metrics.String(), "responses and errors": outside.String(), "extension logs": extLogs.String()} {
		for _, c := range append([]string{canarySecret, url.QueryEscape(canarySecret), canaryToken, canaryProofSession, "ASIACANARYKEYID", signature(t, proof), proof.Headers[:40]}, keyCanaries...) {
			if strings.Contains(text, c) {
				i := strings.Index(text, c)
				t.Errorf("%s contain a canary %q near: …%s…", what, c, text[max(0, i-120):min(len(text), i+60)])
			}
		}
	}
	if standin.Calls() == 0 {
		t.Fatal("no web identity token was requested: the aws_web_identity scenarios did not run")
	}
	if dpopProofs == 0 || !strings.Contains(logs.String(), `"dpop_proof":"issued"`) {
		t.Fatal("no DPoP proof was issued: the DPoP scenarios did not run")
	}
	if lp.assertions == 0 {
		t.Fatal("no client assertion reached the leaky provider: the key-material scenarios did not run")
	}
	if !strings.Contains(logs.String(), `"outcome":"signature_not_accepted_by_sts"`) || !strings.Contains(logs.String(), `"msg":"audit"`) {
		t.Fatal("the canary proofs were not refused and audited as intended")
	}
	if !strings.Contains(listing, `"name":"post"`) || metrics.Len() == 0 || logs.Len() == 0 {
		t.Fatal("the scenarios did not run as intended")
	}
}

// signature is the SigV4 signature a proof carries.
func signature(t *testing.T, p *identity.Proof) string {
	raw, _ := base64.StdEncoding.DecodeString(p.Headers)
	_, sig, ok := strings.Cut(string(raw), "Signature=")
	if !ok || len(sig) < 64 {
		t.Fatal("no signature in the proof")
	}
	return sig[:64]
}

// invokeAPI is the Lambda Invoke API over the vend handler, for the extension.
type invokeAPI struct{ h lambda.Handler }

func (a invokeAPI) Invoke(ctx context.Context, in *awslambda.InvokeInput, _ ...func(*awslambda.Options)) (*awslambda.InvokeOutput, error) {
	out, err := a.h.Invoke(ctx, in.Payload)
	if err != nil {
		b, _ := json.Marshal(map[string]string{"errorMessage": err.Error(), "errorType": wire.ErrorType(err)})
		return &awslambda.InvokeOutput{StatusCode: 200, FunctionError: aws.String("Unhandled"), Payload: b}, nil
	}
	return &awslambda.InvokeOutput{StatusCode: 200, Payload: out}, nil
}

// pemBody is a run of a PEM's base64, which must appear nowhere.
func pemBody(p string) string {
	lines := strings.Split(strings.TrimSpace(p), "\n")
	return lines[1][:40]
}

// certOf is a self-signed PEM certificate for k.
func certOf(t *testing.T, k *ecdsa.PrivateKey) string {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "canary-signer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// selfSigned is a client certificate and its key, PEM.
func selfSigned(t *testing.T) (string, string) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "canary-client"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(k)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}))
}
