// Package integration runs the vending core against the real parts:
// DynamoDB Local, moto (KMS, Secrets Manager) and separate OS processes.
package integration

import (
	"os"
	"testing"

	"github.com/token-vendor/token-vendor/tests/fleet"
)

func TestMain(m *testing.M) {
	fleet.RunIfMember() // fleet members re-execute this binary
	os.Exit(m.Run())
}
