package webidentity

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/upstream"
)

// fakeSTS issues a distinct JWT per call; with hold set, each call waits
// for it (or for its own context) before answering.
type fakeSTS struct {
	calls   atomic.Int64
	hold    chan struct{}
	arrived chan string // the audience of each call, as it arrives
	mu      sync.Mutex
	auds    []string
}

func (f *fakeSTS) GetWebIdentityToken(ctx context.Context, in *sts.GetWebIdentityTokenInput, _ ...func(*sts.Options)) (*sts.GetWebIdentityTokenOutput, error) {
	n := f.calls.Add(1)
	f.mu.Lock()
	f.auds = append(f.auds, strings.Join(in.Audience, " "))
	f.mu.Unlock()
	if f.arrived != nil {
		f.arrived <- strings.Join(in.Audience, " ")
	}
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	jwt := fmt.Sprintf("eyJ.jwt-%d", n)
	return &sts.GetWebIdentityTokenOutput{WebIdentityToken: &jwt}, nil
}

func federated(name string) *provider.Definition {
	return &provider.Definition{Name: name, TokenURL: "https://login.example/" + name + "/token", ClientID: name + "-app", AuthMethod: provider.AuthAWSWebIdentity}
}

// TestJWTNeverSharedAcrossProviders: two providers federated with one
// audience (Entra's default) each get their own JWT: the one sent to one
// provider's token endpoint is never sent to another's. Before the fix the
// JWT was cached per (audience, algorithm, duration): one STS call, and
// both endpoints received the same bearer JWT.
func TestJWTNeverSharedAcrossProviders(t *testing.T) {
	api := &fakeSTS{}
	tok := New(api)
	a, b := federated("a"), federated("b")
	ja, err := tok.Token(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := tok.Token(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	if ja == jb || api.calls.Load() != 2 {
		t.Fatalf("providers a and b got %q and %q from %d STS calls; want one JWT each", ja, jb, api.calls.Load())
	}
	if again, _ := tok.Token(context.Background(), a); again != ja || api.calls.Load() != 2 {
		t.Fatalf("a's JWT is reused while valid: %q (%d calls)", again, api.calls.Load())
	}
	// Another registration under the same name (token_url changed) is
	// another audience of the bearer JWT: it gets its own.
	moved := federated("a")
	moved.TokenURL = "https://login.example/elsewhere/token"
	if jm, _ := tok.Token(context.Background(), moved); jm == ja {
		t.Fatal("a changed registration received the old one's JWT")
	}
	for _, aud := range api.auds {
		if aud != provider.DefaultWebIdentityAudience {
			t.Fatalf("requested for audience %q, want the provider's audience", aud)
		}
	}
}

// TestOneCallersCancellationFailsNoOther: the STS call runs on its own
// context, not the first caller's: a caller that gives up returns at once
// with its own context's error (not an STS failure, which would open a
// cooldown), and another caller of the same provider still gets the JWT.
// Before the fix the call ran on the first caller's context: its
// cancellation failed every waiter with a transient STS error.
func TestOneCallersCancellationFailsNoOther(t *testing.T) {
	api := &fakeSTS{hold: make(chan struct{}), arrived: make(chan string, 4)}
	tok := New(api)
	a := federated("a")
	ctx1, cancel1 := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := tok.Token(ctx1, a); first <- err }()
	<-api.arrived
	second := make(chan string, 1)
	var secondErr error
	go func() {
		j, err := tok.Token(context.Background(), a)
		secondErr = err
		second <- j
	}()
	time.Sleep(50 * time.Millisecond) // the second caller joins the flight
	cancel1()
	select {
	case err := <-first:
		if _, isSTS := upstream.AsRetrieveError(err); !errors.Is(err, context.Canceled) || isSTS || !strings.Contains(err.Error(), `"a"`) {
			t.Fatalf("the canceled caller: %v; want its own cancellation, naming its provider, not an STS failure", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a canceled caller waited for STS")
	}
	close(api.hold)
	if j := <-second; secondErr != nil || j == "" {
		t.Fatalf("the other caller failed with the first one's cancellation: %v", secondErr)
	}
	if api.calls.Load() != 1 {
		t.Fatalf("%d STS calls; the waiter shares the one in flight", api.calls.Load())
	}
}

// TestOtherProviderNotFailedByCallersDeadline: a caller of provider a whose
// deadline passes while STS is slow fails only itself; a caller of provider
// b meanwhile gets its JWT, and no error names the wrong provider. Before
// the fix b joined a's flight (same audience) and failed with an error
// naming a.
func TestOtherProviderNotFailedByCallersDeadline(t *testing.T) {
	api := &fakeSTS{hold: make(chan struct{}), arrived: make(chan string, 4)}
	tok := New(api)
	ctxA, cancelA := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelA()
	errA := make(chan error, 1)
	go func() { _, err := tok.Token(ctxA, federated("a")); errA <- err }()
	<-api.arrived
	doneB := make(chan error, 1)
	go func() { _, err := tok.Token(context.Background(), federated("b")); doneB <- err }()
	if err := <-errA; err == nil {
		t.Fatal("a's caller returned a JWT STS never issued")
	}
	close(api.hold)
	select {
	case err := <-doneB:
		if err != nil {
			t.Fatalf("b's caller failed with a's deadline: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("b's caller did not return")
	}
}

// TestSTSErrorsNameTheirProvider: a failure shared by waiters of one flight
// is reported under each waiter's own provider.
func TestSTSErrorsNameTheirProvider(t *testing.T) {
	tok := New(failingSTS{})
	for _, name := range []string{"a", "b"} {
		_, err := tok.Token(context.Background(), federated(name))
		re, ok := upstream.AsRetrieveError(err)
		if !ok || re.Provider != name || re.Code != "web_identity_denied" {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

type failingSTS struct{}

func (failingSTS) GetWebIdentityToken(context.Context, *sts.GetWebIdentityTokenInput, ...func(*sts.Options)) (*sts.GetWebIdentityTokenOutput, error) {
	return nil, failingAPIError()
}

func failingAPIError() error {
	return &smithy.GenericAPIError{Code: "AccessDenied", Message: "not allowed"}
}
