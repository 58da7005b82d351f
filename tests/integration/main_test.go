// Package integration runs the vending core against the real parts:
// DynamoDB Local, moto (KMS, Secrets Manager) and separate OS processes.
package integration

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// The fleet tests re-execute this test binary as the fleet's instances.
	if os.Getenv(envChild) != "" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}
