// Package identity is who is asking, as AWS verified it (docs/design.md §11).
// Each edge resolves the caller once, into one Caller carried by the
// request's context: the HTTP API and the function URL from the IAM
// identity Lambda's front door puts in the event, direct invoke from a
// signed sts:GetCallerIdentity request the caller attaches (a Proof), which
// the vendor has STS verify. Nothing a caller merely writes is trusted.
package identity

import (
	"context"

	"github.com/token-vendor/token-vendor/pkg/principal"
)

// Path is the way a request reached the vendor.
type Path string

const (
	PathAPI    Path = "api"    // API Gateway HTTP API, AWS_IAM
	PathURL    Path = "url"    // Lambda function URL, AuthType AWS_IAM
	PathInvoke Path = "invoke" // direct invoke of the vend function
	PathLocal  Path = "local"  // tokenvendor serve: no AWS in front
)

// Reasons a caller has no verified identity: the words the refusal carries.
const (
	NoIdentity        = "no_identity"
	ProofMalformed    = "proof_malformed"
	ProofExpired      = "proof_expired"
	ProofOtherVendor  = "proof_for_another_vendor"
	ProofOtherHost    = "proof_for_another_host"
	SignatureRejected = "signature_not_accepted_by_sts"
	STSUnavailable    = "sts_unavailable"
)

// Caller is the resolved identity of one request.
type Caller struct {
	Path Path
	// ARN is the principal AWS verified; empty when there is none.
	ARN     string
	Account string
	OrgID   string
	// Problem says why ARN is empty (one of the reasons above), and Detail
	// says it in words; neither ever holds the proof.
	Problem, Detail string
	// Retryable is true when the identity could not be checked for a
	// reason that may pass (STS unreachable).
	Retryable bool
}

// Verified reports whether AWS vouched for the caller.
func (c Caller) Verified() bool { return c.ARN != "" }

// Name is the caller's ARN, or "unverified".
func (c Caller) Name() string {
	if c.ARN == "" {
		return "unverified"
	}
	return c.ARN
}

// FromIAM is the identity API Gateway or a function URL puts in
// requestContext.authorizer.iam after checking the request's SigV4 signature.
func FromIAM(path Path, userARN, account, orgID string) Caller {
	if _, err := principal.Parse(userARN); err != nil {
		return Caller{Path: path, Problem: NoIdentity, Detail: "the request carries no IAM identity (is the route's authorization AWS_IAM?)"}
	}
	if account == "" {
		account = principal.Account(userARN)
	}
	return Caller{Path: path, ARN: userARN, Account: account, OrgID: orgID}
}

// Anonymous is a caller with no identity, and why.
func Anonymous(path Path, detail string) Caller {
	return Caller{Path: path, Problem: NoIdentity, Detail: detail}
}

type ctxKey struct{}

// NewContext carries c with ctx.
func NewContext(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, ctxKey{}, c)
}

// FromContext is the caller the edge resolved; a context the edges never
// saw holds an anonymous local caller.
func FromContext(ctx context.Context) Caller {
	if c, ok := ctx.Value(ctxKey{}).(Caller); ok {
		return c
	}
	return Anonymous(PathLocal, "no identity was resolved for this request")
}
