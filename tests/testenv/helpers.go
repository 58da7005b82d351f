package testenv

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
)

// SyncBuffer collects output (logs, a process's stdout) from concurrent
// writers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Switchable is a reverse proxy to target that answers 503 while Down is
// set: a dependency (STS, say) that goes away and comes back.
type Switchable struct {
	*httptest.Server
	Down atomic.Bool
}

// NewSwitchable starts one; Close it when done.
func NewSwitchable(target string) (*Switchable, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	s := &Switchable{}
	rp := httputil.NewSingleHostReverseProxy(u)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.Down.Load() {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	return s, nil
}
