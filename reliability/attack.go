package main

import (
	"fmt"
	"io"
	"sort"
)

// attackRow is one line of the attack table: an attacker (or a hostile
// operator) tries to obtain or choose a token it may not have. Tokens leaked
// must be 0 on every row; the other columns say what the attempt cost.
type attackRow struct {
	Attack   string
	Attempts int    // requests the attacker made
	Leaked   int    // tokens (or token choices) the attacker obtained: must be 0
	Refused  int    // attempts refused (or records treated as absent)
	Upstream int    // token requests the provider saw because of the attack
	StoreOps int    // store operations the attack caused
	Expect   string // the contract
	Pass     bool
}

// attack is a registered attack scenario. Each area registers its rows from
// its own file (attack_<area>.go) with registerAttack in an init function,
// so the table grows without two changes touching one list.
type attack struct {
	order int // position in the table
	name  string
	fn    func(quick bool) (attackRow, error)
}

var attacks []attack

//lint:ignore U1000 attack_<area>.go files call it from their init functions
func registerAttack(order int, name string, fn func(quick bool) (attackRow, error)) {
	attacks = append(attacks, attack{order: order, name: name, fn: fn})
}

func (s *suite) runAttacks(log io.Writer) error {
	sort.SliceStable(attacks, func(i, j int) bool { return attacks[i].order < attacks[j].order })
	for _, a := range attacks {
		if !selected(s.only, a.name) {
			continue
		}
		fmt.Fprintf(log, "reliability: attack: %s…\n", a.name)
		r, err := a.fn(s.quick)
		if err != nil {
			return fmt.Errorf("attack %s: %w", a.name, err)
		}
		if r.Attack == "" {
			r.Attack = a.name
		}
		r.Pass = r.Pass && r.Leaked == 0
		s.attacks = append(s.attacks, r)
	}
	return nil
}

func (s *suite) writeAttacks(w func(string, ...any)) {
	if len(s.attacks) == 0 {
		return
	}
	w("")
	w("## Attacks")
	w("")
	w("Each row is an attempt to obtain or choose a token the attacker may not have. Columns: *attempts* — requests the attacker made; *leaked* — tokens (or token choices) the attacker obtained (must be 0); *refused* — attempts refused or records treated as absent; *upstream* — token requests the provider saw because of the attack; *store ops* — store operations it caused.")
	w("")
	w("| attack | attempts | leaked | refused | upstream | store ops | expected | result |")
	w("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
	for _, r := range s.attacks {
		w("| %s | %d | %d | %d | %d | %d | %s | %s |", r.Attack, r.Attempts, r.Leaked, r.Refused, r.Upstream, r.StoreOps, r.Expect, pass(r.Pass))
	}
}
