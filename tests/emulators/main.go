// Command emulators starts DynamoDB Local and moto on free loopback ports,
// runs a command with their endpoints in the environment, and stops them:
//
//	go run ./tests/emulators -- go test -race ./...
package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: emulators -- COMMAND [ARGS...]")
		os.Exit(2)
	}
	os.Exit(run(args))
}

func run(args []string) int {
	dir, err := testenv.DynamoDBLocalDir()
	if err != nil {
		fmt.Fprintln(os.Stderr, "emulators:", err)
		return 1
	}
	ddb, err := testenv.StartDynamoDBLocal(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "emulators:", err)
		return 1
	}
	defer ddb.Stop()
	moto, err := testenv.StartMoto()
	if err != nil {
		fmt.Fprintln(os.Stderr, "emulators:", err)
		return 1
	}
	defer moto.Stop()
	fmt.Fprintf(os.Stderr, "emulators: DynamoDB Local at %s, moto at %s\n", ddb.Endpoint, moto.Endpoint)

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(),
		testenv.EnvDynamoDB+"="+ddb.Endpoint,
		testenv.EnvMoto+"="+moto.Endpoint,
		testenv.EnvDDBDir+"="+dir,
		testenv.EnvRequire+"=1",
	)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "emulators:", err)
		return 1
	}
	go func() {
		s := <-sig
		_ = cmd.Process.Signal(s)
	}()
	if err := cmd.Wait(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		return 1
	}
	return 0
}
