// Package integration runs the vending core against the real parts:
// DynamoDB Local, moto (KMS, Secrets Manager) and separate OS processes.
package integration

import (
	"os"
	"testing"

	"github.com/token-vendor/token-vendor/tests/fleet"
)

func TestMain(m *testing.M) {
	// The fleet tests re-execute this test binary as the fleet's members.
	if os.Getenv(fleet.EnvChild) != "" {
		os.Exit(fleet.Main())
	}
	os.Exit(m.Run())
}
