package extension

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Name is the extension's name: Lambda requires it to be the executable's
// file name under /opt/extensions.
const Name = "token-vendor"

// Event is what the Extensions API's event/next returns.
type Event struct {
	EventType      string `json:"eventType"` // INVOKE or SHUTDOWN
	DeadlineMs     int64  `json:"deadlineMs"`
	RequestID      string `json:"requestId"`
	ShutdownReason string `json:"shutdownReason"`
}

// Config is what Run needs.
type Config struct {
	RuntimeAPI string // AWS_LAMBDA_RUNTIME_API host:port
	Addr       string // where to serve, 127.0.0.1:PORT
	Cache      *Cache
	Log        *slog.Logger
}

// Run serves the cache on cfg.Addr, registers with the Extensions API and
// handles its events until SHUTDOWN (or ctx ends). The listener is open
// before registration, so the function can ask for tokens during its own
// init.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	srv := &http.Server{Handler: cfg.Cache.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	base := "http://" + cfg.RuntimeAPI + "/2020-01-01/extension"
	id, err := register(ctx, base)
	if err != nil {
		return err
	}
	log.InfoContext(ctx, "extension registered", "addr", ln.Addr().String())
	for {
		ev, err := next(ctx, base, id)
		if err != nil {
			return err
		}
		switch ev.EventType {
		case "INVOKE":
			// Renew what is due now, while the invocation runs; the next
			// call to event/next says this extension is done, and Lambda
			// may freeze the environment after it.
			rctx, cancel := context.WithDeadline(ctx, time.UnixMilli(ev.DeadlineMs))
			if n := cfg.Cache.RenewDue(rctx); n > 0 {
				st := cfg.Cache.Stats()
				log.InfoContext(ctx, "renewed tokens ahead of expiry", "count", n, "request_id", ev.RequestID,
					"keys", st.Entries, "evictions", st.Evictions, "dropped", st.Dropped)
			}
			cancel()
		case "SHUTDOWN":
			log.InfoContext(ctx, "extension shutting down", "reason", ev.ShutdownReason)
			sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			return srv.Shutdown(sctx)
		}
	}
}

func register(ctx context.Context, base string) (string, error) {
	body, _ := json.Marshal(map[string][]string{"events": {"INVOKE", "SHUTDOWN"}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/register", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Lambda-Extension-Name", Name)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("register: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	id := resp.Header.Get("Lambda-Extension-Identifier")
	if resp.StatusCode != http.StatusOK || id == "" {
		return "", fmt.Errorf("register: status %d", resp.StatusCode)
	}
	return id, nil
}

func next(ctx context.Context, base, id string) (Event, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/event/next", nil)
	if err != nil {
		return Event{}, err
	}
	req.Header.Set("Lambda-Extension-Identifier", id)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Event{}, fmt.Errorf("event/next: %w", err)
	}
	defer resp.Body.Close()
	var ev Event
	if resp.StatusCode != http.StatusOK {
		return Event{}, fmt.Errorf("event/next: status %d", resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ev); err != nil {
		return Event{}, fmt.Errorf("event/next: %w", err)
	}
	return ev, nil
}
