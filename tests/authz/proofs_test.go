package authz

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/provider"
)

// roleInAccount creates a role at path in another moto account (moto's
// x-moto-account-id), any principal may assume it, and returns the
// credentials of a session of it: credentials of that account.
func (w *world) roleInAccount(t *testing.T, acct, path, name, session string) aws.Credentials {
	t.Helper()
	ctx := context.Background()
	r, err := w.moto.IAM(w.moto.Admins[acct]).CreateRole(ctx, &iam.CreateRoleInput{RoleName: aws.String(name), Path: aws.String(path),
		AssumeRolePolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(*r.Role.Arn, ":"+acct+":") {
		t.Fatalf("the role was made in another account: %s", *r.Role.Arn)
	}
	out, err := w.moto.STS(w.moto.Admin).AssumeRole(ctx, &sts.AssumeRoleInput{RoleArn: r.Role.Arn, RoleSessionName: aws.String(session)})
	if err != nil {
		t.Fatal(err)
	}
	c := out.Credentials
	return aws.Credentials{AccessKeyID: *c.AccessKeyId, SecretAccessKey: *c.SecretAccessKey, SessionToken: *c.SessionToken, CanExpire: true, Expires: *c.Expiration}
}

// TestCrossAccountDirectInvoke: a consumer in account B invokes the vend
// function of account A by its ARN. Its proof, signed with the credentials
// of a role of B, is verified through the vendor's STS (moto, signatures
// enforced) and matched by allowed_callers naming B's role; the audit
// record names B as the caller's account. The same role name in A, and B's
// role on a provider listing only A's roles, are refused.
func TestCrossAccountDirectInvoke(t *testing.T) {
	w := setup(t)
	b := w.roleInAccount(t, accountB, "/partners/", "consumer-b", "b1")
	id, err := w.moto.STS(b).GetCallerIdentity(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	wantARN := "arn:aws:sts::" + accountB + ":assumed-role/consumer-b/b1"
	if *id.Arn != wantARN || *id.Account != accountB {
		t.Fatalf("moto gave the session %s in %s", *id.Arn, *id.Account)
	}
	_, sameNameInA := w.moto.Role(t, "/partners/", "consumer-b", "a1")

	// The consumer signs for the function ARN it invokes, which is A's.
	pr := &identity.Prover{Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) { return b, nil }),
		Region: "us-east-1", Endpoint: w.moto.Endpoint, Function: vendorID + ":live"}
	proof, err := pr.Proof(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tok, typ, msg := w.directInvoke(t, "partner", proof)
	if typ != "" || tok.AccessToken == "" {
		t.Fatalf("account B's listed role: %s %s", typ, msg)
	}
	if _, typ, msg := w.directInvoke(t, "partner", w.proof(t, sameNameInA, w.moto.Endpoint, vendorID, time.Now())); typ != "CallerNotAllowed" || !strings.Contains(msg, "principal_not_listed") {
		t.Fatalf("the same role name in account A: %s %s", typ, msg)
	}
	if _, typ, msg := w.directInvoke(t, "payments", proof); typ != "CallerNotAllowed" || !strings.Contains(msg, "principal_not_listed") {
		t.Fatalf("account B's role on a provider for A's roles: %s %s", typ, msg)
	}
	recs := w.audits(t)
	if len(recs) != 3 {
		t.Fatalf("%d audit records, want 3", len(recs))
	}
	for i, want := range []struct{ caller, account, outcome string }{
		{wantARN, accountB, "granted"},
		{"arn:aws:sts::" + account + ":assumed-role/consumer-b/a1", account, "principal_not_listed"},
		{wantARN, accountB, "principal_not_listed"},
	} {
		if recs[i]["caller"] != want.caller || recs[i]["caller_account"] != want.account || recs[i]["outcome"] != want.outcome || recs[i]["path"] != "invoke" {
			t.Errorf("audit record %d: %v, want caller %s of %s, %s", i, recs[i], want.caller, want.account, want.outcome)
		}
	}
	if recs[0]["token_sha256_prefix"] != tokenPrefix(tok.AccessToken) {
		t.Errorf("the grant's audit record names another token")
	}
}

// TestProofForAnotherStack: the vendor id is the vend function's ARN, so
// a proof made for a function of the same name in another account or
// region, or naming the bare function name (which any stack could be
// given), is refused as for another vendor, before STS, store or provider.
func TestProofForAnotherStack(t *testing.T) {
	w := setup(t)
	now := time.Now()
	for _, other := range []string{
		"arn:aws:lambda:us-east-1:" + accountB + ":function:" + functionName,
		"arn:aws:lambda:eu-west-1:" + account + ":function:" + functionName,
		functionName,
	} {
		_, typ, msg := w.directInvoke(t, "payments", w.proof(t, w.allowed, w.moto.Endpoint, other, now))
		if typ != "CallerNotAllowed" || !strings.Contains(msg, identity.ProofOtherVendor) {
			t.Errorf("a proof for %s: %s %q", other, typ, msg)
		}
	}
	if n, u := w.ddb.n.Load(), w.up.Server.Requests(w.up.Defs["demo-k2"].ClientID); n != 0 || u != 0 {
		t.Fatalf("proofs for another stack caused %d DynamoDB and %d upstream requests", n, u)
	}
	if tok, typ, msg := w.directInvoke(t, "payments", w.proof(t, w.allowed, w.moto.Endpoint, vendorID, now)); typ != "" || tok.AccessToken == "" {
		t.Fatalf("a proof for this function's ARN: %s %s", typ, msg)
	}
}

// TestStrictProofsEndToEnd: through the vend handler and moto's STS, a
// proof whose Authorization repeats SignedHeaders, or whose header value
// holds CR/LF, is the caller's error (proof_malformed, CallerNotAllowed),
// not a retryable IdentityUnavailable; an unsigned header the caller added
// is not sent to STS, so the proof still verifies.
func TestStrictProofsEndToEnd(t *testing.T) {
	w := setup(t)
	now := time.Now()
	good := w.proof(t, w.allowed, w.moto.Endpoint, vendorID, now)
	dup := *good
	dup.Headers = editHeaders(t, good.Headers, func(h map[string][]string) {
		a := h["Authorization"][0]
		i := strings.Index(a, "SignedHeaders=")
		h["Authorization"][0] = a + ", " + a[i:i+strings.Index(a[i:], ",")]
	})
	crlf := *good
	crlf.Headers = editHeaders(t, good.Headers, func(h map[string][]string) { h["Content-Type"] = []string{"text/plain\r\nX-Injected: 1"} })
	for name, p := range map[string]*identity.Proof{"duplicate SignedHeaders": &dup, "CR/LF in a header value": &crlf} {
		_, typ, msg := w.directInvoke(t, "payments", p)
		if typ != "CallerNotAllowed" || !strings.Contains(msg, identity.ProofMalformed) {
			t.Errorf("%s: %s %q, want CallerNotAllowed with %s", name, typ, msg, identity.ProofMalformed)
		}
	}
	extra := *good
	extra.Headers = editHeaders(t, good.Headers, func(h map[string][]string) {
		h["X-Amz-Target"] = []string{"AWSSecurityTokenServiceV20110615.AssumeRole"}
	})
	if tok, typ, msg := w.directInvoke(t, "payments", &extra); typ != "" || tok.AccessToken == "" {
		t.Fatalf("a good proof with an unsigned header added: %s %s", typ, msg)
	}
}

// TestWildcardPatternWithPathRefusedAtLoad: the README's old pattern
// role/teams/payouts/payouts-* would admit role/sandbox/payouts-evil (a
// session ARN carries no path); the definition is refused when it loads,
// naming the entry and why, and a pattern without the path loads.
func TestWildcardPatternWithPathRefusedAtLoad(t *testing.T) {
	def := []byte(`{"token_url":"https://auth.example/token","client_id":"c","client_secret":"s",
	 "allowed_callers":["arn:aws:iam::123456789012:role/payments-api","arn:aws:iam::123456789012:role/teams/payouts/payouts-*"]}`)
	_, err := provider.Parse("payouts", def)
	var fe *provider.FieldError
	if !errors.As(err, &fe) || fe.Field != "allowed_callers[1]" || !strings.Contains(err.Error(), "path") {
		t.Fatalf("want allowed_callers[1] refused for its path, got %v", err)
	}
	var raw map[string]any
	json.Unmarshal(def, &raw)
	raw["allowed_callers"] = []string{"arn:aws:iam::123456789012:role/payouts-*"}
	fixed, _ := json.Marshal(raw)
	if _, err := provider.Parse("payouts", fixed); err != nil {
		t.Fatal(err)
	}
}
