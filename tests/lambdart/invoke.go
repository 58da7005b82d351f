package lambdart

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/token-vendor/token-vendor/pkg/wire"
)

// Handler is a function's code as lambda.NewHandler returns it.
type Handler interface {
	Invoke(ctx context.Context, payload []byte) ([]byte, error)
}

// InvokeAPI stands in for Lambda's synchronous Invoke API of one function,
// running its real handler in this process (moto's Lambda runs functions
// only in Docker): a function error comes back as Lambda sends it,
// X-Amz-Function-Error with {"errorMessage","errorType"}. It records when
// each invocation came and the access key that signed it. Point
// AWS_ENDPOINT_URL_LAMBDA at URL.
type InvokeAPI struct {
	URL string

	srv   *httptest.Server
	mu    sync.Mutex
	calls []InvokeCall
	delay time.Duration
}

// InvokeCall is one invocation the stand-in received.
type InvokeCall struct {
	At        time.Time
	AccessKey string // from the SigV4 Authorization header's Credential
}

// StartInvokeAPI serves h on a loopback port until Close.
func StartInvokeAPI(h Handler) *InvokeAPI {
	s := &InvokeAPI{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.calls = append(s.calls, InvokeCall{At: time.Now(), AccessKey: accessKey(r.Header.Get("Authorization"))})
		delay := s.delay
		s.mu.Unlock()
		time.Sleep(delay)
		out, err := h.Invoke(r.Context(), body)
		if err != nil {
			w.Header().Set("X-Amz-Function-Error", "Unhandled")
			json.NewEncoder(w).Encode(map[string]string{"errorMessage": err.Error(), "errorType": wire.ErrorType(err)})
			return
		}
		w.Write(out)
	}))
	s.URL = s.srv.URL
	return s
}

// SetDelay holds later invocations d before running them.
func (s *InvokeAPI) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// Calls returns the invocations so far.
func (s *InvokeAPI) Calls() []InvokeCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]InvokeCall(nil), s.calls...)
}

// Close stops the API.
func (s *InvokeAPI) Close() { s.srv.Close() }

func accessKey(auth string) string {
	_, rest, ok := strings.Cut(auth, "Credential=")
	if !ok {
		return ""
	}
	key, _, _ := strings.Cut(rest, "/")
	return key
}
