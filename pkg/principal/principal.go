// Package principal matches verified IAM principal ARNs against the
// patterns a provider definition lists in allowed_callers and admin_callers
// (docs/design.md §11).
//
// A pattern is one of
//
//	arn:PARTITION:iam::ACCOUNT:root                  any principal of ACCOUNT
//	arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME      that role's sessions
//	arn:PARTITION:iam::ACCOUNT:user/[PATH/]NAME      that user
//	arn:PARTITION:sts::ACCOUNT:assumed-role/NAME/SESSION
//
// where NAME and SESSION may hold `*` for any run of characters. Role and user
// names are unique in an account whatever their path, and a session ARN
// carries no path, so the path of an exact name is not compared. A pattern
// with `*` in its name must have no path (or /): its path could not be
// checked, and role/teams/pay-* would admit role/sandbox/pay-evil, so
// ParsePattern refuses it. Everything else is compared exactly: partition,
// account, kind and the whole name.
package principal

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds of principal.
const (
	Root        = "root"
	Role        = "role"
	User        = "user"
	AssumedRole = "assumed-role"
	Federated   = "federated-user"
)

// The checks below are byte loops rather than regular expressions: Match
// parses the caller's ARN on every restricted vend.

// account reports whether s is 12 digits.
func account(s string) bool {
	if len(s) != 12 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// partition reports whether s is aws, aws-cn, aws-us-gov, …: aws(-[a-z]+)*.
func partition(s string) bool {
	rest, ok := strings.CutPrefix(s, "aws")
	for ok && rest != "" {
		if rest[0] != '-' || len(rest) < 2 {
			return false
		}
		i := 1
		for i < len(rest) && rest[i] >= 'a' && rest[i] <= 'z' {
			i++
		}
		if i == 1 {
			return false
		}
		rest = rest[i:]
	}
	return ok
}

// name reports whether s is an IAM name: 1-128 of letters, digits and
// +=,.@_- (and `*` in patterns, when star).
func name(s string, star bool) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+=,.@_-", c) >= 0 || star && c == '*') {
			return false
		}
	}
	return true
}

// path reports whether s is an IAM path: / or /…/ of printable, non-space
// ASCII, no `*`.
func path(s string) bool {
	if s != "/" && (len(s) < 3 || s[0] != '/' || s[len(s)-1] != '/') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e || s[i] == '*' {
			return false
		}
	}
	return true
}

// ARN is a parsed principal ARN.
type ARN struct {
	Partition, Account, Kind string
	Name, Session            string // Session for assumed-role only
}

// Account is the account of a principal ARN, or "" when s is not one.
func Account(s string) string {
	a, err := Parse(s)
	if err != nil {
		return ""
	}
	return a.Account
}

// Parse reads a verified principal ARN as STS and API Gateway report it.
func Parse(s string) (ARN, error) { return parse(s, false) }

func parse(s string, pattern bool) (ARN, error) {
	if len(s) > 2048 {
		return ARN{}, errors.New("longer than 2048 characters")
	}
	parts := strings.SplitN(s, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" {
		return ARN{}, errors.New("not an ARN (want arn:aws:iam::ACCOUNT:role/NAME, …)")
	}
	a := ARN{Partition: parts[1], Account: parts[4]}
	service, region, res := parts[2], parts[3], parts[5]
	if !partition(a.Partition) {
		return ARN{}, errors.New("unknown partition")
	}
	if region != "" {
		return ARN{}, errors.New("IAM ARNs have no region")
	}
	if !account(a.Account) {
		return ARN{}, errors.New("account must be 12 digits")
	}
	kind, rest, _ := strings.Cut(res, "/")
	a.Kind = kind
	switch {
	case service == "iam" && kind == Root && res == Root:
		return a, nil
	case service == "iam" && (kind == Role || kind == User):
		i := strings.LastIndex(rest, "/")
		p, n := "/"+rest[:i+1], rest[i+1:]
		if i < 0 {
			p = "/"
		}
		if !path(p) {
			return ARN{}, fmt.Errorf("malformed %s path", kind)
		}
		if !name(n, pattern) {
			return ARN{}, fmt.Errorf("malformed %s name", kind)
		}
		if pattern && p != "/" && strings.Contains(n, "*") {
			// A session ARN carries no path, so the path could not be checked:
			// role/teams/pay-* would admit role/sandbox/pay-evil.
			return ARN{}, fmt.Errorf("a %s pattern with a wildcard must have no path (%s): the path is not in a session's ARN, so it cannot be checked and would admit the same name under any path; list exact %s names, or use a name prefix", kind, p, kind)
		}
		a.Name = n
		return a, nil
	case service == "sts" && kind == AssumedRole:
		n, session, ok := strings.Cut(rest, "/")
		if !ok || !name(n, pattern) || !name(session, pattern) {
			return ARN{}, errors.New("want assumed-role/ROLE/SESSION")
		}
		a.Name, a.Session = n, session
		return a, nil
	case service == "sts" && kind == Federated && !pattern:
		if !name(rest, false) {
			return ARN{}, errors.New("malformed federated user")
		}
		a.Name = rest
		return a, nil
	}
	return ARN{}, errors.New("want iam::ACCOUNT:root, iam::ACCOUNT:role/NAME, iam::ACCOUNT:user/NAME or sts::ACCOUNT:assumed-role/NAME/SESSION")
}

// Pattern is one allowed_callers entry.
type Pattern struct {
	raw string
	arn ARN
}

// ParsePattern checks an allowed_callers entry; the error says what is wrong
// with it (the caller names the entry).
func ParsePattern(s string) (Pattern, error) {
	a, err := parse(s, true)
	if err != nil {
		return Pattern{}, err
	}
	return Pattern{raw: s, arn: a}, nil
}

func (p Pattern) String() string { return p.raw }

// Match reports whether the verified principal arn is admitted by p.
func (p Pattern) Match(arn string) bool {
	a, err := Parse(arn)
	if err != nil || a.Partition != p.arn.Partition || a.Account != p.arn.Account {
		return false
	}
	switch p.arn.Kind {
	case Root:
		return true
	case Role:
		return (a.Kind == AssumedRole || a.Kind == Role) && glob(p.arn.Name, a.Name)
	case User:
		return a.Kind == User && glob(p.arn.Name, a.Name)
	case AssumedRole:
		return a.Kind == AssumedRole && glob(p.arn.Name, a.Name) && glob(p.arn.Session, a.Session)
	}
	return false
}

// Any reports whether one of ps admits arn.
func Any(ps []Pattern, arn string) bool {
	for _, p := range ps {
		if p.Match(arn) {
			return true
		}
	}
	return false
}

// glob matches s against pat, where `*` stands for any run of characters
// (none included) and everything else for itself. Linear in practice: the
// classic two-pointer match with one backtrack point.
func glob(pat, s string) bool {
	px, sx := 0, 0
	star, mark := -1, 0
	for sx < len(s) {
		switch {
		case px < len(pat) && pat[px] == '*':
			star, mark = px, sx
			px++
		case px < len(pat) && pat[px] == s[sx]:
			px++
			sx++
		case star >= 0:
			px = star + 1
			mark++
			sx = mark
		default:
			return false
		}
	}
	for px < len(pat) && pat[px] == '*' {
		px++
	}
	return px == len(pat)
}
