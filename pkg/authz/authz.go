// Package authz is the one place the vendor decides whether a caller may
// have a provider's token (docs/design.md §11). The edges resolve who is
// asking (package identity); this package says yes or no, and why.
package authz

import (
	"errors"
	"fmt"

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

// PrincipalNotListed is the refusal reason for a verified caller the
// definition does not admit; the other reasons are identity's.
const PrincipalNotListed = "principal_not_listed"

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

// Decide returns nil when c may do op on def's tokens, else a
// *NotAllowedError. It reads nothing: the decision precedes every store
// read and upstream request.
func Decide(c identity.Caller, def *provider.Definition, op Op) error {
	ps := def.Callers(op.Admin())
	if len(ps) == 0 {
		return nil
	}
	field := "allowed_callers"
	if op.Admin() && len(def.AdminCallers) > 0 {
		field = "admin_callers"
	}
	if !c.Verified() {
		reason, detail := c.Problem, c.Detail
		if reason == "" {
			reason, detail = identity.NoIdentity, "the request carries no verified identity"
		}
		return &NotAllowedError{Provider: def.Name, Reason: reason, Detail: detail + "; provider " + def.Name + " admits only the principals in its " + field, Retryable: c.Retryable}
	}
	if principal.Any(ps, c.ARN) {
		return nil
	}
	return &NotAllowedError{Provider: def.Name, Reason: PrincipalNotListed, Detail: fmt.Sprintf("%s is not in provider %s's %s", c.ARN, def.Name, field)}
}
