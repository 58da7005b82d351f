// Package agent is the token-vendor agent: the extension's local API for
// services in containers and on instances (an ECS or EKS sidecar, a systemd
// service on EC2), as the Secrets Manager Agent is for secrets. It serves
// the extension's handler and cache on a loopback port, fills the cache by
// invoking the vend function with the task's, pod's or instance's own
// identity (proved as the extension proves the function's), renews what it
// holds ahead of expiry in the background, and answers only requests that
// carry its SSRF token.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/token-vendor/token-vendor/pkg/extension"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// Header carries the agent's SSRF token on every request but health.
const Header = "X-Token-Vendor-Agent-Token"

// DefaultAddr is where the agent listens: the extension's port, on loopback.
var DefaultAddr = fmt.Sprintf("127.0.0.1:%d", extension.DefaultPort)

// HealthPath answers 200 without the token: container health checks and
// dependsOn conditions cannot carry a secret.
const HealthPath = "/healthz"

// minTokenLen keeps a guessable SSRF token out.
const minTokenLen = 16

// Loopback checks addr is host:port with host a loopback address
// (127.0.0.0/8, ::1 or localhost): the agent serves tokens to whoever can
// reach it, so nothing outside the task, pod or instance may.
func Loopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want host:port on loopback, e.g. %s", addr, DefaultAddr)
	}
	if port == "" {
		return fmt.Errorf("address %q has no port", addr)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q is not a loopback address: the agent listens on 127.0.0.1 or ::1 only", addr)
	}
	return nil
}

// LoadToken returns the SSRF token: value when set, else the content of
// file; a file that does not exist yet is created holding a new random
// token, so a sidecar can hand one to its application through a shared
// volume without any secret to manage. Surrounding white space is ignored.
func LoadToken(value, file string) (string, error) {
	if value != "" && file != "" {
		return "", errors.New("set the agent token or its file, not both")
	}
	tok := strings.TrimSpace(value)
	if file != "" {
		b, err := os.ReadFile(file)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if tok, err = createToken(file); err != nil {
				return "", err
			}
		case err != nil:
			return "", fmt.Errorf("agent token file: %w", err)
		default:
			tok = strings.TrimSpace(string(b))
		}
	}
	if tok == "" {
		return "", errors.New("no agent token: set TOKEN_VENDOR_AGENT_TOKEN or TOKEN_VENDOR_AGENT_TOKEN_FILE (the value the application sends in " + Header + ")")
	}
	if len(tok) < minTokenLen {
		return "", fmt.Errorf("the agent token is %d characters; at least %d are needed", len(tok), minTokenLen)
	}
	return tok, nil
}

// createToken writes a new random token to file, readable by any user
// (0644: the application's container may run as another user; the volume
// is shared only by the task's or pod's containers). An existing file
// (another agent raced this one) is read instead.
func createToken(file string) (string, error) {
	b := make([]byte, 32)
	rand.Read(b)
	tok := hex.EncodeToString(b)
	tmp, err := os.CreateTemp(filepath.Dir(file), ".token-*")
	if err != nil {
		return "", fmt.Errorf("agent token file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(tok + "\n"); err != nil {
		tmp.Close()
		return "", fmt.Errorf("agent token file: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", fmt.Errorf("agent token file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("agent token file: %w", err)
	}
	// Link fails if the file appeared meanwhile: then that one is the token.
	if err := os.Link(tmp.Name(), file); err != nil {
		if b, rerr := os.ReadFile(file); rerr == nil {
			return strings.TrimSpace(string(b)), nil
		}
		return "", fmt.Errorf("agent token file: %w", err)
	}
	return tok, nil
}

// Handler serves health without a token and, for requests carrying token
// in Header, the extension's routes from cache (whose secret must be
// token too): the same routes, JSON and errors as the extension.
func Handler(token string, cache *extension.Cache) http.Handler {
	inner := cache.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Pragma", "no-cache")
		if r.URL.Path == HealthPath {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "health answers GET")
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"status":"ok"}` + "\n"))
			return
		}
		got := r.Header.Get(Header)
		if token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong "+Header+" header (the agent's token)")
			return
		}
		// The extension's handler checks its own header against the same
		// secret; only this check decides, so no other header is taken.
		r.Header.Set(extension.Header, token)
		inner.ServeHTTP(w, r)
	})
}

func writeError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(wire.ErrorResponse{Error: code, ErrorDescription: desc})
}

// Config is what Run needs.
type Config struct {
	Addr  string // loopback host:port
	Token string // the SSRF token
	// Cache holds the tokens; its secret must be Token.
	Cache *extension.Cache
	// RenewEvery is how often tokens past their refresh point are renewed
	// (default 10 s).
	RenewEvery time.Duration
	// Grace bounds how long in-flight requests may take to finish once
	// ctx ends (default 10 s).
	Grace time.Duration
	Log   *slog.Logger
	// Ready, when set, is called with the listening address.
	Ready func(addr string)
}

// Run serves until ctx ends (SIGTERM), then stops taking connections and
// lets requests in flight finish, for at most cfg.Grace.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := Loopback(cfg.Addr); err != nil {
		return err
	}
	if cfg.Token == "" || cfg.Cache == nil {
		return errors.New("agent: a token and a cache are needed")
	}
	renewEvery, grace := cfg.RenewEvery, cfg.Grace
	if renewEvery <= 0 {
		renewEvery = 10 * time.Second
	}
	if grace <= 0 {
		grace = 10 * time.Second
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	// localhost could resolve anywhere; what was bound is what counts.
	if a, ok := ln.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
		ln.Close()
		return fmt.Errorf("%s is bound to %s, not a loopback address", cfg.Addr, ln.Addr())
	}
	srv := &http.Server{Handler: Handler(cfg.Token, cfg.Cache), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.InfoContext(ctx, "agent listening", "addr", ln.Addr().String())
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr().String())
	}

	renewCtx, stopRenewing := context.WithCancel(context.WithoutCancel(ctx))
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(renewEvery)
		defer t.Stop()
		for {
			select {
			case <-renewCtx.Done():
				return
			case <-t.C:
				if n := cfg.Cache.RenewDue(renewCtx); n > 0 {
					log.InfoContext(renewCtx, "renewed tokens ahead of expiry", "count", n)
				}
			}
		}
	}()
	defer func() { stopRenewing(); <-renewed }()

	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.InfoContext(ctx, "agent shutting down; requests in flight finish", "grace_s", grace.Seconds())
	stopRenewing()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("shutdown: requests still in flight after %s: %w", grace, err)
	}
	return nil
}

// Healthy asks the agent at addr for its health, as a container health
// check does (the image has no shell or curl: the agent checks itself).
func Healthy(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+HealthPath, nil)
	if err != nil {
		return err
	}
	// No proxy: loopback only.
	c := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 2 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health: status %d", resp.StatusCode)
	}
	return nil
}
