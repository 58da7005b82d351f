package lambdart

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Env is one Lambda execution environment with extensions: a runtime (the
// function's process, in any language) and extension processes, behind one
// Runtime API and Extensions API, driven through Lambda's lifecycle. INIT:
// extensions register, then the runtime starts; init is done when the
// runtime and every extension ask for their next event. INVOKE: each
// extension gets the event and the runtime the payload; the invocation ends
// when the runtime has answered and every extension has asked for its next
// event, and the environment is frozen (SIGSTOP). SHUTDOWN: extensions get
// the event and must exit.
type Env struct {
	Name    string
	API     string // host:port of the APIs
	ln      net.Listener
	srv     *http.Server
	procs   []*exec.Cmd
	exited  []chan struct{}
	runtime *exec.Cmd

	runtimeExited chan struct{}

	mu      sync.Mutex
	exts    map[string]*ext
	order   []*ext
	inv     chan pending
	current *pending
	seq     int
	windows []Invocation
	output  bytes.Buffer
}

type ext struct {
	id     string
	name   string
	events chan []byte
	ready  chan struct{} // the extension asked for its next event
}

// StartEnv starts extensions (executables, named by their file names), lets
// them register, then starts the runtime (argv) and waits for init to end.
// env is the function's environment; extensions get it too, as in Lambda.
func StartEnv(name string, runtime []string, extensions []string, env map[string]string) (*Env, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &Env{Name: name, API: ln.Addr().String(), ln: ln, exts: map[string]*ext{}, inv: make(chan pending)}
	registered := make(chan struct{}, len(extensions))
	runtimePolled := make(chan struct{}, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /2020-01-01/extension/register", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		e.mu.Lock()
		x := &ext{id: fmt.Sprintf("ext-%d", len(e.order)+1), name: r.Header.Get("Lambda-Extension-Name"), events: make(chan []byte, 1), ready: make(chan struct{}, 1)}
		e.exts[x.id] = x
		e.order = append(e.order, x)
		e.mu.Unlock()
		w.Header().Set("Lambda-Extension-Identifier", x.id)
		json.NewEncoder(w).Encode(map[string]string{"functionName": name, "functionVersion": "$LATEST", "handler": "bootstrap"})
		registered <- struct{}{}
	})
	mux.HandleFunc("GET /2020-01-01/extension/event/next", func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		x := e.exts[r.Header.Get("Lambda-Extension-Identifier")]
		e.mu.Unlock()
		if x == nil {
			http.Error(w, "unknown extension", http.StatusForbidden)
			return
		}
		select {
		case x.ready <- struct{}{}:
		default:
		}
		select {
		case ev := <-x.events:
			w.Write(ev)
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("GET /2018-06-01/runtime/invocation/next", func(w http.ResponseWriter, r *http.Request) {
		select {
		case runtimePolled <- struct{}{}:
		default:
		}
		select {
		case p := <-e.inv:
			e.mu.Lock()
			e.current = &p
			e.mu.Unlock()
			w.Header().Set("Lambda-Runtime-Aws-Request-Id", p.id)
			w.Header().Set("Lambda-Runtime-Deadline-Ms", fmt.Sprint(p.start.Add(p.timeout).UnixMilli()))
			w.Write(p.event)
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/{kind}", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		p := e.current
		e.current = nil
		e.mu.Unlock()
		if p == nil || r.PathValue("id") != p.id {
			http.Error(w, "unknown request id", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		inv := Invocation{RequestID: p.id, Payload: body, Start: p.start, End: time.Now()}
		if r.PathValue("kind") == "error" {
			// Lambda takes errorType from the error document; the header is optional.
			var doc struct{ ErrorType string }
			json.Unmarshal(body, &doc)
			inv.ErrorType = cmp.Or(doc.ErrorType, r.Header.Get("Lambda-Runtime-Function-Error-Type"), "Unknown")
		}
		p.done <- inv
	})
	mux.HandleFunc("POST /2018-06-01/runtime/init/error", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	})
	e.srv = &http.Server{Handler: mux}
	go e.srv.Serve(ln)

	base := []string{"AWS_LAMBDA_RUNTIME_API=" + e.API, "AWS_LAMBDA_FUNCTION_NAME=" + name, "AWS_LAMBDA_FUNCTION_VERSION=$LATEST",
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE=256", "AWS_REGION=us-east-1", "AWS_DEFAULT_REGION=us-east-1", "AWS_EC2_METADATA_DISABLED=true",
		"HOME=" + os.TempDir(), "TZ=:UTC", "PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		base = append(base, k+"="+v)
	}
	start := func(argv []string) (*exec.Cmd, error) {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = base
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		done := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				e.mu.Lock()
				e.output.Write(sc.Bytes())
				e.output.WriteByte('\n')
				e.mu.Unlock()
			}
			cmd.Wait()
			close(done)
		}()
		e.procs = append(e.procs, cmd)
		e.exited = append(e.exited, done)
		return cmd, nil
	}
	fail := func(err error) (*Env, error) { e.Stop(); return nil, err }
	for _, path := range extensions {
		if _, err := start([]string{path}); err != nil {
			return fail(err)
		}
	}
	for range extensions {
		select {
		case <-registered:
		case <-time.After(10 * time.Second):
			return fail(fmt.Errorf("an extension did not register:\n%s", e.Output()))
		}
	}
	if e.runtime, err = start(runtime); err != nil {
		return fail(err)
	}
	e.runtimeExited = e.exited[len(e.exited)-1]
	select {
	case <-runtimePolled:
	case <-e.runtimeExited:
		return fail(fmt.Errorf("%s exited during init:\n%s", name, e.Output()))
	case <-time.After(20 * time.Second):
		return fail(fmt.Errorf("the runtime never polled for an event:\n%s", e.Output()))
	}
	if err := e.allReady(10 * time.Second); err != nil {
		return fail(err)
	}
	e.signal(syscall.SIGSTOP)
	return e, nil
}

func (e *Env) allReady(limit time.Duration) error {
	e.mu.Lock()
	exts := append([]*ext(nil), e.order...)
	e.mu.Unlock()
	deadline := time.After(limit)
	for _, x := range exts {
		select {
		case <-x.ready:
		case <-deadline:
			return fmt.Errorf("extension %s did not ask for its next event:\n%s", x.name, e.Output())
		}
	}
	return nil
}

func (e *Env) signal(s syscall.Signal) {
	for _, p := range e.procs {
		_ = p.Process.Signal(s)
	}
}

// Invoke thaws the environment, gives every extension the INVOKE event and
// the runtime event, and waits until the runtime answered and every
// extension is done; then it freezes the environment. Invocation.End is
// when the runtime answered; Windows records the whole invocation.
func (e *Env) Invoke(event []byte, timeout time.Duration) (Invocation, error) {
	e.mu.Lock()
	e.seq++
	p := pending{id: fmt.Sprintf("%s-%04d", e.Name, e.seq), event: event, start: time.Now(), timeout: timeout, done: make(chan Invocation, 1)}
	exts := append([]*ext(nil), e.order...)
	e.mu.Unlock()
	e.signal(syscall.SIGCONT)
	ev, _ := json.Marshal(map[string]any{"eventType": "INVOKE", "requestId": p.id, "deadlineMs": p.start.Add(timeout).UnixMilli()})
	for _, x := range exts {
		x.events <- ev
	}
	select {
	case e.inv <- p:
	case <-e.runtimeExited:
		return Invocation{}, fmt.Errorf("%s exited:\n%s", e.Name, e.Output())
	case <-time.After(10 * time.Second):
		return Invocation{}, fmt.Errorf("the runtime did not poll for the next event:\n%s", e.Output())
	}
	var inv Invocation
	select {
	case inv = <-p.done:
	case <-e.runtimeExited:
		return Invocation{}, fmt.Errorf("%s exited during an invocation:\n%s", e.Name, e.Output())
	case <-time.After(timeout + 5*time.Second):
		return Invocation{}, fmt.Errorf("no answer within %v:\n%s", timeout, e.Output())
	}
	if err := e.allReady(timeout); err != nil {
		return inv, err
	}
	window := inv
	window.End = time.Now()
	e.signal(syscall.SIGSTOP)
	e.mu.Lock()
	e.windows = append(e.windows, window)
	e.mu.Unlock()
	return inv, nil
}

// Windows returns the invocations so far, each from its start to the moment
// the last extension was done.
func (e *Env) Windows() []Invocation {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Invocation(nil), e.windows...)
}

// Thaw lets every process run between invocations (a test that looks for
// work done after a response wants to give it the chance).
func (e *Env) Thaw() error {
	for _, p := range e.procs {
		if err := p.Process.Signal(syscall.SIGCONT); err != nil {
			return err
		}
	}
	return nil
}

// Shutdown sends SHUTDOWN to the extensions and returns how long they took
// to exit (an error if any outlived limit, as Lambda would kill it).
func (e *Env) Shutdown(limit time.Duration) (time.Duration, error) {
	e.signal(syscall.SIGCONT)
	start := time.Now()
	ev, _ := json.Marshal(map[string]any{"eventType": "SHUTDOWN", "shutdownReason": "spindown", "deadlineMs": start.Add(limit).UnixMilli()})
	e.mu.Lock()
	exts := append([]*ext(nil), e.order...)
	e.mu.Unlock()
	for _, x := range exts {
		x.events <- ev
	}
	deadline := time.After(limit)
	for i, p := range e.procs {
		if p == e.runtime {
			continue
		}
		select {
		case <-e.exited[i]:
		case <-deadline:
			return time.Since(start), fmt.Errorf("an extension did not exit within %v", limit)
		}
	}
	return time.Since(start), nil
}

// Output is everything the processes printed.
func (e *Env) Output() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.output.String()
}

// Stop kills every process and closes the APIs.
func (e *Env) Stop() {
	e.signal(syscall.SIGCONT)
	for i, p := range e.procs {
		_ = p.Process.Kill()
		<-e.exited[i]
	}
	e.srv.Close()
}

// BuildExtension builds an extension layer the way `sam build` does
// (make build-<LogicalId>), for the host, and returns the executable's path
// (the layer's extensions/ entry).
func BuildExtension(logicalID, dir string) (string, error) {
	out, err := makeTarget(logicalID, dir, "LAYER_ARCH")
	return filepath.Join(out, "extensions", "token-vendor"), err
}
