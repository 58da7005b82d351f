package lambdart

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"time"
)

// AsyncEngine stands in for Lambda's asynchronous invocation, the one part
// of Lambda a fanned-out refresher run uses (moto's Lambda runs functions
// only in Docker). The Invoke API with InvocationType Event queues the
// event and answers 202; a pool of execution environments (at most one
// event each at a time: the function's reserved concurrency) runs the
// queued events, each with its deadline. Point AWS_ENDPOINT_URL_LAMBDA at URL.
type AsyncEngine struct {
	URL string

	srv   *httptest.Server
	mu    sync.Mutex
	pools map[string]*pool
	wg    sync.WaitGroup
}

type pool struct {
	idle    chan *Function
	timeout time.Duration
	done    []Invocation
}

// StartAsyncEngine serves the Invoke API on a loopback port.
func StartAsyncEngine() *AsyncEngine {
	e := &AsyncEngine{pools: map[string]*pool{}}
	e.srv = httptest.NewServer(http.HandlerFunc(e.invoke))
	e.URL = e.srv.URL
	return e
}

// Serve runs events for the function name on fns, timeout each.
func (e *AsyncEngine) Serve(name string, timeout time.Duration, fns ...*Function) {
	p := &pool{idle: make(chan *Function, len(fns)), timeout: timeout}
	for _, f := range fns {
		p.idle <- f
	}
	e.mu.Lock()
	e.pools[name] = p
	e.mu.Unlock()
}

// Queue is what EventBridge does on a schedule: an asynchronous invocation.
func (e *AsyncEngine) Queue(name string, event []byte) error {
	e.mu.Lock()
	p := e.pools[name]
	e.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no function %s", name)
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		f := <-p.idle
		inv, err := f.Invoke(event, p.timeout)
		p.idle <- f
		if err != nil {
			inv.ErrorType, inv.Payload = "HarnessError", []byte(err.Error())
		}
		e.mu.Lock()
		p.done = append(p.done, inv)
		e.mu.Unlock()
	}()
	return nil
}

// Wait returns when every queued event has run (an error after limit).
func (e *AsyncEngine) Wait(limit time.Duration) error {
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(limit):
		return fmt.Errorf("queued invocations still running after %v", limit)
	}
}

// Invocations are the events run for name so far, in completion order.
func (e *AsyncEngine) Invocations(name string) []Invocation {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p := e.pools[name]; p != nil {
		return append([]Invocation(nil), p.done...)
	}
	return nil
}

// Close stops the API (after Wait, or events still running are abandoned).
func (e *AsyncEngine) Close() { e.srv.Close() }

// invoke is POST /2015-03-31/functions/{FunctionName}/invocations.
func (e *AsyncEngine) invoke(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/2015-03-31/functions/")
	name, ok2 := strings.CutSuffix(rest, "/invocations")
	if r.Method != http.MethodPost || !ok || !ok2 {
		lambdaError(w, http.StatusNotFound, "ResourceNotFoundException", "no such operation")
		return
	}
	name, _ = url.PathUnescape(name)
	if r.Header.Get("X-Amz-Invocation-Type") != "Event" {
		lambdaError(w, http.StatusBadRequest, "InvalidParameterValueException", "this stand-in queues asynchronous (Event) invocations only")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 256<<10+1))
	if err != nil || len(body) > 256<<10 {
		lambdaError(w, http.StatusRequestEntityTooLarge, "RequestTooLargeException", "asynchronous payloads are at most 256 KB")
		return
	}
	if err := e.Queue(name, body); err != nil {
		lambdaError(w, http.StatusNotFound, "ResourceNotFoundException", "Function not found: "+name)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

func lambdaError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"Type":"User","message":%q}`, msg)
}
