// Package authz is the one place the vendor decides whether a caller may
// have a provider's token (docs/design.md §11). The edges resolve who is
// asking (package identity); this package says yes or no, and why.
package authz

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/principal"
	"github.com/token-vendor/token-vendor/pkg/provider"
)

// Op is what a caller asks to do with a provider's tokens.
type Op string

const (
	OpVend     Op = "vend"
	OpRejected Op = "rejected"
	OpRefresh  Op = "refresh"
	OpRevoke   Op = "revoke"
	OpList     Op = "list"
)

// Admin reports whether op is an operator operation (admin_callers).
func (op Op) Admin() bool { return op == OpRefresh || op == OpRevoke }

// Operator paths: the vendor's own tools, run by someone who already holds
// the provider secrets and the table (the CLI reads them directly; the
// manual refresher event needs lambda:InvokeFunction on the refresher,
// which the template grants to no one). They pass the decision for every
// provider and operation, and are audited like any other request.
const (
	PathCLI       identity.Path = "cli"
	PathRefresher identity.Path = "refresher"
)

// Operator reports whether p is one of the operator paths.
func Operator(p identity.Path) bool { return p == PathCLI || p == PathRefresher }

// Refusal reasons of this package; the others are identity's.
const (
	// PrincipalNotListed: a verified caller the definition does not admit.
	PrincipalNotListed = "principal_not_listed"
	// AccountNotAdmitted: a verified caller of an account (and organization)
	// the vendor does not serve, asking for a provider with no allowed_callers.
	AccountNotAdmitted = "account_not_admitted"
	// NoOperators: an operator operation on a provider that names no
	// admin_callers.
	NoOperators = "no_operators"
)

// ErrCallerNotAllowed is wrapped by every refusal.
var ErrCallerNotAllowed = errors.New("caller not allowed")

// NotAllowedError is a refusal: the caller is not admitted, or has no
// verified identity. It never carries the caller's proof.
type NotAllowedError struct {
	Provider string
	Reason   string // identity.NoIdentity, …, PrincipalNotListed
	Detail   string
	// Retryable: the identity could not be checked now (STS unavailable).
	Retryable bool
}

func (e *NotAllowedError) Error() string {
	return fmt.Sprintf("provider %s: caller not allowed (%s): %s", e.Provider, e.Reason, e.Detail)
}

func (e *NotAllowedError) Unwrap() error { return ErrCallerNotAllowed }

// Policy is the vendor-wide half of the decision: who may use a provider
// that names no allowed_callers. Its zero value admits verified callers of
// any account (outside Lambda, where the vendor's own account is unknown);
// the gate adds the vendor's account to Accounts.
type Policy struct {
	// Accounts admitted to unrestricted providers: the vendor's own and
	// CONSUMER_ACCOUNT_IDS.
	Accounts []string
	// OrgID (CONSUMER_ORG_ID) admits every account of that organization.
	OrgID string
	// AllowUnverified (ALLOW_UNVERIFIED_CALLERS) restores the open default:
	// unrestricted providers are vended to callers with no verified
	// identity, which makes every such provider's token available to any
	// principal lambda:InvokeFunction lets reach the vend function.
	AllowUnverified bool
}

// Admission is a positive decision and what the audit record should say
// about it beyond "granted".
type Admission struct {
	// Caller is the caller as the audit records it: OrgID filled in where
	// the decision relied on the function's resource policy for it.
	Caller identity.Caller
	// Note says what the audit record should know: an unverified caller
	// admitted by the opt-in (and the proof problem, if any), or where the
	// caller's organization came from.
	Note string
}

// Decide returns the admission when c may do op on def's tokens, else a
// *NotAllowedError. It reads nothing: the decision precedes every store
// read and upstream request.
func (p Policy) Decide(c identity.Caller, def *provider.Definition, op Op) (Admission, error) {
	adm := Admission{Caller: c}
	if Operator(c.Path) {
		return adm, nil
	}
	restricted := len(def.AllowedCallers) > 0
	if op.Admin() {
		if len(def.AdminCallers) > 0 {
			return adm, match(c, def, def.Callers(true), "admin_callers")
		}
		if c.Path == identity.PathLocal && !restricted {
			return adm, nil // tokenvendor serve: the operator's own machine
		}
		return adm, &NotAllowedError{Provider: def.Name, Reason: NoOperators,
			Detail: "provider " + def.Name + " names no admin_callers: forced refresh and revoke are for the principals listed there (or the tokenvendor CLI and the refresher's manual event)"}
	}
	if restricted {
		return adm, match(c, def, def.Callers(false), "allowed_callers")
	}
	if c.Path == identity.PathLocal {
		return adm, nil // tokenvendor serve: no AWS in front, nothing to verify
	}
	if !c.Verified() {
		reason, detail := problem(c)
		if p.AllowUnverified {
			adm.Note = "unverified caller admitted by ALLOW_UNVERIFIED_CALLERS (" + reason + ": " + detail + ")"
			return adm, nil
		}
		return adm, &NotAllowedError{Provider: def.Name, Reason: reason, Retryable: c.Retryable,
			Detail: detail + "; the vendor gives provider " + def.Name + "'s tokens only to verified principals of its own account" + p.others()}
	}
	switch {
	case len(p.Accounts) == 0 && p.OrgID == "":
		return adm, nil // the vendor's account is unknown (outside Lambda)
	case slices.Contains(p.Accounts, c.Account):
		return adm, nil
	case p.OrgID != "" && c.OrgID == p.OrgID:
		return adm, nil
	case p.OrgID != "" && c.OrgID == "" && c.Path == identity.PathInvoke:
		// STS does not say which organization an account belongs to. The
		// vend function's resource policy admits only the consumer
		// organization's principals (aws:PrincipalOrgID), so an invoke that
		// reached the function came from it: the audit says so.
		adm.Caller.OrgID = p.OrgID
		adm.Note = "caller_org " + p.OrgID + " from the vend function's resource policy (aws:PrincipalOrgID), not from STS"
		return adm, nil
	}
	return adm, &NotAllowedError{Provider: def.Name, Reason: AccountNotAdmitted,
		Detail: fmt.Sprintf("account %s is not the vendor's account%s; provider %s names no allowed_callers", c.Account, p.others(), def.Name)}
}

// Decide is the decision with the zero Policy.
func Decide(c identity.Caller, def *provider.Definition, op Op) error {
	_, err := Policy{}.Decide(c, def, op)
	return err
}

func (p Policy) others() string {
	var parts []string
	if len(p.Accounts) > 1 {
		parts = append(parts, "the consumer accounts")
	}
	if p.OrgID != "" {
		parts = append(parts, "organization "+p.OrgID)
	}
	if len(parts) == 0 {
		return ""
	}
	return " or " + strings.Join(parts, " or ")
}

func problem(c identity.Caller) (reason, detail string) {
	if c.Problem == "" {
		return identity.NoIdentity, "the request carries no verified identity"
	}
	return c.Problem, c.Detail
}

func match(c identity.Caller, def *provider.Definition, ps []principal.Pattern, field string) error {
	if !c.Verified() {
		reason, detail := problem(c)
		return &NotAllowedError{Provider: def.Name, Reason: reason, Detail: detail + "; provider " + def.Name + " admits only the principals in its " + field, Retryable: c.Retryable}
	}
	if principal.Any(ps, c.ARN) {
		return nil
	}
	return &NotAllowedError{Provider: def.Name, Reason: PrincipalNotListed, Detail: fmt.Sprintf("%s is not in provider %s's %s", c.ARN, def.Name, field)}
}
