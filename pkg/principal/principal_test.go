package principal

import (
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	const acct = "123456789012"
	cases := []struct {
		pattern, arn string
		want         bool
	}{
		// A role admits its sessions whatever the role's path.
		{"arn:aws:iam::123456789012:role/payments", "arn:aws:sts::123456789012:assumed-role/payments/i-0abc", true},
		{"arn:aws:iam::123456789012:role/teams/eu/payments", "arn:aws:sts::123456789012:assumed-role/payments/s1", true},
		// A name that merely starts like the allowed one is refused.
		{"arn:aws:iam::123456789012:role/payments", "arn:aws:sts::123456789012:assumed-role/payments-admin/s1", false},
		{"arn:aws:iam::123456789012:role/payments", "arn:aws:sts::123456789012:assumed-role/pay/s1", false},
		// Same name, another account or partition.
		{"arn:aws:iam::123456789012:role/payments", "arn:aws:sts::210987654321:assumed-role/payments/s1", false},
		{"arn:aws:iam::123456789012:role/payments", "arn:aws-cn:sts::123456789012:assumed-role/payments/s1", false},
		// A role pattern does not admit a user of that name.
		{"arn:aws:iam::123456789012:role/payments", "arn:aws:iam::123456789012:user/payments", false},
		{"arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:user/alice", true},
		{"arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:user/ops/alice", true},
		{"arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:user/alicea", false},
		{"arn:aws:iam::123456789012:user/alice", "arn:aws:sts::123456789012:assumed-role/alice/x", false},
		// Root admits any principal of its account, and only of it.
		{"arn:aws:iam::123456789012:root", "arn:aws:sts::123456789012:assumed-role/anything/x", true},
		{"arn:aws:iam::123456789012:root", "arn:aws:iam::123456789012:user/bob", true},
		{"arn:aws:iam::123456789012:root", "arn:aws:iam::999999999999:user/bob", false},
		// Wildcards stand for any run of characters in a name.
		{"arn:aws:iam::123456789012:role/payments-*", "arn:aws:sts::123456789012:assumed-role/payments-eu/s", true},
		{"arn:aws:iam::123456789012:role/payments-*", "arn:aws:sts::123456789012:assumed-role/payments-/s", true},
		{"arn:aws:iam::123456789012:role/payments-*", "arn:aws:sts::123456789012:assumed-role/payments/s", false},
		{"arn:aws:iam::123456789012:role/*-prod", "arn:aws:sts::123456789012:assumed-role/a-b-prod/s", true},
		{"arn:aws:iam::123456789012:role/*-prod", "arn:aws:sts::123456789012:assumed-role/a-prod-x/s", false},
		{"arn:aws:sts::123456789012:assumed-role/payments/ci-*", "arn:aws:sts::123456789012:assumed-role/payments/ci-42", true},
		{"arn:aws:sts::123456789012:assumed-role/payments/ci-*", "arn:aws:sts::123456789012:assumed-role/payments/dev", false},
		// Garbage never matches.
		{"arn:aws:iam::123456789012:root", "", false},
		{"arn:aws:iam::123456789012:root", "unverified", false},
		{"arn:aws:iam::123456789012:root", "arn:aws:iam::123456789012:root/../x", false},
	}
	for _, c := range cases {
		p, err := ParsePattern(c.pattern)
		if err != nil {
			t.Fatalf("%s: %v", c.pattern, err)
		}
		if got := p.Match(c.arn); got != c.want {
			t.Errorf("%s ~ %s = %v, want %v", c.pattern, c.arn, got, c.want)
		}
	}
	if Account("arn:aws:sts::"+acct+":assumed-role/r/s") != acct {
		t.Error("Account")
	}
}

func TestParsePatternRefuses(t *testing.T) {
	for _, bad := range []string{
		"", "*", "payments", "arn:aws:iam::12345678901:role/x", "arn:aws:iam::123456789012:role/",
		"arn:aws:iam:us-east-1:123456789012:role/x", "arn:aws:s3:::bucket", "arn:aws:iam::123456789012:group/x",
		"arn:aws:iam::*:role/x", "arn:aws:iam::123456789012:role/x y", "arn:aws:iam::123456789012:role/a*/x",
		"arn:aws:sts::123456789012:assumed-role/x", "arn:aws:iam::123456789012:root/x", "arn:evil:iam::123456789012:root",
		"arn:aws:iam::123456789012:role/" + strings.Repeat("a", 200),
	} {
		if _, err := ParsePattern(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("arn:aws:iam::123456789012:role/pay*", "arn:aws:sts::123456789012:assumed-role/payments/s")
	f.Add("arn:aws:iam::123456789012:root", "arn:aws:iam::123456789012:user/a/b")
	f.Add("arn:aws:sts::123456789012:assumed-role/*/*", "arn:aws:sts::123456789012:assumed-role/**/x")
	f.Fuzz(func(t *testing.T, pat, arn string) {
		p, err := ParsePattern(pat)
		if err != nil {
			return
		}
		got := p.Match(arn)
		a, perr := Parse(arn)
		if perr != nil && got {
			t.Fatalf("%q admitted the unparsable %q", pat, arn)
		}
		if got && (a.Account != p.arn.Account || a.Partition != p.arn.Partition) {
			t.Fatalf("%q admitted %q of another account", pat, arn)
		}
		// Without a wildcard a role or user pattern admits only its exact name.
		if got && !strings.Contains(pat, "*") && p.arn.Kind != Root && a.Name != p.arn.Name {
			t.Fatalf("%q admitted %q", pat, arn)
		}
	})
}

func FuzzGlob(f *testing.F) {
	f.Add("a*b*c", "aXbYc")
	f.Fuzz(func(t *testing.T, pat, s string) {
		if len(pat) > 64 || len(s) > 64 {
			return
		}
		got := glob(pat, s)
		if want := naive(pat, s); got != want {
			t.Fatalf("glob(%q, %q) = %v, want %v", pat, s, got, want)
		}
	})
}

// naive is the obviously-correct glob, the reference for FuzzGlob: the
// textbook dynamic programme (quadratic, where plain recursion is
// exponential in the number of stars, which the fuzzer found).
func naive(pat, s string) bool {
	// m[i][j]: pat[i:] matches s[j:]
	m := make([][]bool, len(pat)+1)
	for i := range m {
		m[i] = make([]bool, len(s)+1)
	}
	m[len(pat)][len(s)] = true
	for i := len(pat) - 1; i >= 0; i-- {
		for j := len(s); j >= 0; j-- {
			if pat[i] == '*' {
				m[i][j] = m[i+1][j] || (j < len(s) && m[i][j+1])
			} else {
				m[i][j] = j < len(s) && s[j] == pat[i] && m[i+1][j+1]
			}
		}
	}
	return m[0][0]
}

// TestWildcardWithPathRefused: a role session's ARN carries no path, so a
// pattern like role/teams/payouts/payouts-* cannot tell
// role/sandbox/payouts-evil from the team's roles; such a pattern (a
// wildcard with a path other than /) is refused when the definition loads,
// saying why. An exact name keeps its path (not compared: names are unique
// in an account), and a wildcard without a path is as before.
func TestWildcardWithPathRefused(t *testing.T) {
	for _, bad := range []string{
		"arn:aws:iam::123456789012:role/teams/payouts/payouts-*",
		"arn:aws:iam::123456789012:role/teams/*",
		"arn:aws:iam::123456789012:user/ops/*-admin",
	} {
		_, err := ParsePattern(bad)
		if err == nil || !strings.Contains(err.Error(), "path") {
			t.Errorf("%q: %v, want an error about the path", bad, err)
		}
	}
	for _, good := range []string{
		"arn:aws:iam::123456789012:role/teams/payouts/payouts-api",
		"arn:aws:iam::123456789012:role/payouts-*",
		"arn:aws:iam::123456789012:user/ops/alice",
	} {
		if _, err := ParsePattern(good); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
}
