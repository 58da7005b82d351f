// Package faultproxy is a fault-injecting HTTP proxy for tests, put between
// an AWS SDK client and DynamoDB Local or moto. Faults happen on the wire,
// where AWS's own would: a write applied and then answered 500 (the SDK
// retries it, and the retry meets its own landed write), a connection
// dropped after the write was applied, a delay, a throttle, or a request
// held until the test lets it go. SDK middleware cannot fake these
// faithfully: it sees the SDK's view, not what the server did.
package faultproxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Action is what the proxy does with a request a rule matches.
type Action int

const (
	// ApplyThen500 forwards the request, discards the server's answer and
	// answers 500 InternalServerError: the write landed, the client thinks not.
	ApplyThen500 Action = iota + 1
	// DropAfterApply forwards the request, then closes the client's
	// connection with no answer.
	DropAfterApply
	// Delay waits Rule.Delay, then forwards.
	Delay
	// Throttle answers 400 ThrottlingException without forwarding.
	Throttle
	// Hold forwards only once Rule.Release is closed (or the client gives up).
	Hold
)

func (a Action) String() string {
	return map[Action]string{ApplyThen500: "applied + 500", DropAfterApply: "applied + connection dropped",
		Delay: "delay", Throttle: "throttle", Hold: "hold"}[a]
}

// Request is what a rule's Match sees.
type Request struct {
	Operation string // X-Amz-Target after the dot: "PutItem", "Decrypt"
	Body      []byte
}

// Rule is one fault.
type Rule struct {
	Operation string             // required: the operation it applies to
	Match     func(Request) bool // optional further condition on the request
	Action    Action             //
	Delay     time.Duration      // for Delay
	Release   chan struct{}      // for Hold; closed by the test
	Times     int                // how many requests it affects; 0: until removed
	Arrived   chan struct{}      // optional: closed when the first matching request arrives
	hits      int
	arrivedMu sync.Once
}

// Proxy forwards to one endpoint and applies its rules in order.
type Proxy struct {
	URL    string
	target string
	srv    *http.Server
	ln     net.Listener
	client *http.Client

	done  chan struct{}
	mu    sync.Mutex
	rules []*Rule
	seen  map[string]int
}

// Start listens on a free loopback port and forwards to target
// (for example DynamoDB Local's endpoint).
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{URL: "http://" + ln.Addr().String(), target: strings.TrimRight(target, "/"), ln: ln,
		client: &http.Client{Timeout: time.Minute}, seen: map[string]int{}, done: make(chan struct{})}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: 10 * time.Second}
	go p.srv.Serve(ln)
	return p, nil
}

// Close stops the proxy.
func (p *Proxy) Close() {
	close(p.done)
	p.srv.Close()
}

// Add installs a rule after the existing ones and returns it.
func (p *Proxy) Add(r *Rule) *Rule {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = append(p.rules, r)
	return r
}

// Clear removes every rule.
func (p *Proxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = nil
}

// Hits is how many requests a rule has affected.
func (p *Proxy) Hits(r *Rule) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return r.hits
}

// Seen is how many requests for an operation reached the proxy, faults included.
func (p *Proxy) Seen(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[op]
}

// pick counts the request and returns the first rule that takes it.
func (p *Proxy) pick(req Request) *Rule {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen[req.Operation]++
	for _, r := range p.rules {
		if r.Operation != req.Operation || (r.Times > 0 && r.hits >= r.Times) || (r.Match != nil && !r.Match(req)) {
			continue
		}
		r.hits++
		return r
	}
	return nil
}

func (p *Proxy) serve(w http.ResponseWriter, in *http.Request) {
	body, err := io.ReadAll(in.Body)
	if err != nil {
		return
	}
	target := in.Header.Get("X-Amz-Target")
	req := Request{Operation: target[strings.LastIndexByte(target, '.')+1:], Body: body}
	rule := p.pick(req)
	if rule != nil && rule.Arrived != nil {
		rule.arrivedMu.Do(func() { close(rule.Arrived) })
	}
	if rule != nil {
		switch rule.Action {
		case Throttle:
			awsError(w, http.StatusBadRequest, "ThrottlingException", "rate exceeded (injected)")
			return
		case Delay:
			select {
			case <-time.After(rule.Delay):
			case <-in.Context().Done():
				return
			}
		case Hold:
			select {
			case <-rule.Release:
			case <-in.Context().Done():
				// The client gave up; the request still reaches the server
				// late, as a packet stuck in the network would.
				select {
				case <-rule.Release:
				case <-p.done:
					return
				}
			case <-p.done:
				return
			}
		}
	}
	out, err := http.NewRequest(in.Method, p.target+in.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = in.Header.Clone()
	out.Host = in.Host // part of the SigV4 signature
	resp, err := p.client.Do(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if rule != nil {
		switch rule.Action {
		case ApplyThen500:
			awsError(w, http.StatusInternalServerError, "InternalServerError", "internal server error (injected after the request was applied)")
			return
		case DropAfterApply:
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
				}
			}
			return
		}
	}
	for k, vs := range resp.Header {
		if k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	w.Write(answer)
}

// awsError writes an error in the AWS JSON protocols' shape, which both
// DynamoDB (JSON 1.0) and KMS (JSON 1.1) clients parse.
func awsError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	w.Header().Set("X-Amzn-Requestid", fmt.Sprintf("faultproxy-%d", time.Now().UnixNano()))
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
}

// DynamoDB write kinds, told apart by the item a PutItem carries (the
// record layout of docs/design.md §4).

// LeaseTake matches a PutItem that takes a lease on a token record.
func LeaseTake(r Request) bool {
	return tokenRecord(r, func(it item) bool { return it.has("lease_owner") })
}

// TokenWrite matches a PutItem that stores a token and frees the lease.
func TokenWrite(r Request) bool {
	return tokenRecord(r, func(it item) bool {
		return !it.has("lease_owner") && !it.has("last_error") && it.has("access_token") && !it.null("access_token")
	})
}

// Release matches a PutItem that frees a lease after a failed fetch (the
// failure record).
func Release(r Request) bool {
	return tokenRecord(r, func(it item) bool { return !it.has("lease_owner") && it.has("last_error") })
}

type item map[string]map[string]json.RawMessage

func (it item) has(name string) bool  { _, ok := it[name]; return ok }
func (it item) null(name string) bool { _, ok := it[name]["NULL"]; return ok }

func tokenRecord(r Request, f func(item) bool) bool {
	if r.Operation != "PutItem" {
		return false
	}
	var in struct{ Item item }
	if json.Unmarshal(r.Body, &in) != nil || in.Item == nil {
		return false
	}
	var pk string
	if raw, ok := in.Item["pk"]["S"]; ok {
		_ = json.Unmarshal(raw, &pk)
	}
	return strings.HasPrefix(pk, "token#") && f(in.Item)
}
