package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

const canary = "CANARY-client-secret-9f8e"

var bg = context.Background()

func defJSON(secret string) string {
	return `{"token_url":"https://api.example.com/oauth/token","client_id":"id","client_secret":"` + secret + `","auth_method":"client_secret_post"}`
}

func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "providers.json")
	os.WriteFile(path, []byte(`{"k2":`+defJSON("one")+`,"mobi":`+defJSON("two")+`}`), 0o600)
	f, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := f.Get(bg, "k2")
	if err != nil || d.ClientSecret != "one" || d.Name != "k2" {
		t.Fatalf("%v %v", d, err)
	}
	if _, err := f.Get(bg, "nope"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	names, _ := f.Names(bg)
	if strings.Join(names, ",") != "k2,mobi" {
		t.Fatalf("names %v", names)
	}
	os.WriteFile(path, []byte(`{"k2":`+defJSON("rotated")+`}`), 0o600)
	if d, _ := f.Reload(bg, "k2"); d.ClientSecret != "rotated" {
		t.Fatal("reload did not re-read the file")
	}
}

func TestFileSourceErrors(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"syntax":  `{"k2": {"client_secret":"` + canary + `" oops}`,
		"array":   `["` + canary + `"]`,
		"invalid": `{"k2":{"token_url":"http://public.example.com/t","client_id":"a","client_secret":"` + canary + `"}}`,
		"badname": `{"K2 Upper":` + defJSON(canary) + `}`,
	}
	for name, body := range cases {
		path := filepath.Join(dir, name+".json")
		os.WriteFile(path, []byte(body), 0o600)
		_, err := LoadFile(path)
		if err == nil || strings.Contains(err.Error(), canary) {
			t.Errorf("%s: %v", name, err)
		}
	}
	_, err := LoadFile(filepath.Join(dir, "inv.json"))
	if err == nil {
		t.Error("missing file accepted")
	}
	os.WriteFile(filepath.Join(dir, "f.json"), []byte(cases["invalid"]), 0o600)
	_, err = LoadFile(filepath.Join(dir, "f.json"))
	var fe *provider.FieldError
	if !errors.As(err, &fe) || fe.Field != "token_url" || fe.Provider != "k2" {
		t.Fatalf("want field error naming token_url of k2: %v", err)
	}
}

// countingSource counts reads and can fail.
type countingSource struct {
	mu    sync.Mutex
	calls atomic.Int32
	defs  map[string]*provider.Definition
	err   error
	delay time.Duration
}

func (c *countingSource) Get(_ context.Context, name string) (*provider.Definition, error) {
	c.calls.Add(1)
	time.Sleep(c.delay)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	d, ok := c.defs[name]
	if !ok {
		return nil, provider.ErrNotFound
	}
	return d, nil
}

func (c *countingSource) Names(context.Context) ([]string, error) {
	c.calls.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	return []string{"k2"}, nil
}

func (c *countingSource) fail(err error) { c.mu.Lock(); c.err = err; c.mu.Unlock() }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func TestCachedTTLSingleFlightStale(t *testing.T) {
	d, _ := provider.Parse("k2", []byte(defJSON("s")))
	src := &countingSource{defs: map[string]*provider.Definition{"k2": d}, delay: 20 * time.Millisecond}
	clk := &clock{t: time.Unix(1e9, 0)}
	c := NewCached(src, CacheOptions{Now: clk.now})
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Get(bg, "k2"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := src.calls.Load(); n != 1 {
		t.Fatalf("50 concurrent misses made %d source reads", n)
	}
	clk.advance(299 * time.Second)
	c.Get(bg, "k2")
	if src.calls.Load() != 1 {
		t.Fatal("read again inside the TTL")
	}
	clk.advance(2 * time.Second)
	c.Get(bg, "k2")
	if src.calls.Load() != 2 {
		t.Fatal("not read again after the TTL")
	}
	// Source down: the cached definition is served for StaleFor past the TTL.
	src.fail(provider.ErrSourceUnavailable)
	clk.advance(301 * time.Second)
	if got, err := c.Get(bg, "k2"); err != nil || got != d {
		t.Fatalf("stale-if-error: %v", err)
	}
	clk.advance(16 * time.Minute)
	if _, err := c.Get(bg, "k2"); !errors.Is(err, provider.ErrSourceUnavailable) {
		t.Fatalf("stale beyond its bound: %v", err)
	}
	// Reload always reads.
	src.fail(nil)
	before := src.calls.Load()
	c.Reload(bg, "k2")
	if src.calls.Load() != before+1 {
		t.Fatal("reload served from cache")
	}
}

func TestCachedNotFoundIsCachedBriefly(t *testing.T) {
	src := &countingSource{defs: map[string]*provider.Definition{}}
	clk := &clock{t: time.Unix(1e9, 0)}
	c := NewCached(src, CacheOptions{Now: clk.now})
	for i := 0; i < 10; i++ {
		if _, err := c.Get(bg, "ghost"); !errors.Is(err, provider.ErrNotFound) {
			t.Fatal(err)
		}
	}
	if src.calls.Load() != 1 {
		t.Fatalf("unknown names hit the source %d times", src.calls.Load())
	}
	clk.advance(31 * time.Second)
	c.Get(bg, "ghost")
	if src.calls.Load() != 2 {
		t.Fatal("not-found cached too long")
	}
}

// TestCachedNotFoundIsBounded: names are the caller's to invent (the JWKS
// route takes any without IAM); the not-found answers kept stay bounded.
func TestCachedNotFoundIsBounded(t *testing.T) {
	src := &countingSource{defs: map[string]*provider.Definition{"real": {Name: "real"}}}
	c := NewCached(src, CacheOptions{})
	if _, err := c.Get(bg, "real"); err != nil {
		t.Fatal(err)
	}
	for i := range 20000 {
		if _, err := c.Get(bg, fmt.Sprintf("ghost-%d", i)); !errors.Is(err, provider.ErrNotFound) {
			t.Fatal(err)
		}
	}
	c.mu.Lock()
	n := len(c.defs)
	_, kept := c.defs["real"]
	c.mu.Unlock()
	if n > 1025 || !kept {
		t.Fatalf("after 20000 unknown names the cache holds %d entries (real kept: %v), want at most 1024 not-found ones", n, kept)
	}
}

// fakeSM returns canned answers.
type fakeSM struct {
	secret *string
	err    error
	pages  [][]string
}

func (f *fakeSM) GetSecretValue(_ context.Context, in *secretsmanager.GetSecretValueInput, _ ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &secretsmanager.GetSecretValueOutput{Name: in.SecretId, SecretString: f.secret}, nil
}

func (f *fakeSM) ListSecrets(_ context.Context, in *secretsmanager.ListSecretsInput, _ ...func(*secretsmanager.Options)) (*secretsmanager.ListSecretsOutput, error) {
	i := 0
	if in.NextToken != nil {
		i = int((*in.NextToken)[0] - '0')
	}
	out := &secretsmanager.ListSecretsOutput{}
	for _, n := range f.pages[i] {
		out.SecretList = append(out.SecretList, smtypes.SecretListEntry{Name: aws.String(n)})
	}
	if i+1 < len(f.pages) {
		out.NextToken = aws.String(string(rune('0' + i + 1)))
	}
	return out, nil
}

func TestSecretsManagerErrors(t *testing.T) {
	bad := `{"token_url":"https://x.example/t","client_id":"a","client_secret":"` + canary + `","auth_method":"magic"}`
	cases := []struct {
		name string
		sm   *fakeSM
		want error
	}{
		{"access denied", &fakeSM{err: &smithy.GenericAPIError{Code: "AccessDeniedException", Message: "no"}}, ErrAccessDenied},
		{"not found", &fakeSM{err: &smtypes.ResourceNotFoundException{Message: aws.String("nope")}}, provider.ErrNotFound},
		{"throttled", &fakeSM{err: &smithy.GenericAPIError{Code: "ThrottlingException"}}, provider.ErrSourceUnavailable},
		{"malformed", &fakeSM{secret: aws.String(`{"client_secret":"` + canary + `",`)}, nil},
		{"invalid", &fakeSM{secret: aws.String(bad)}, nil},
		{"binary", &fakeSM{}, nil},
	}
	for _, tc := range cases {
		_, err := NewSecretsManager(tc.sm, "tv/").Get(bg, "k2")
		if err == nil || strings.Contains(err.Error(), canary) || !strings.Contains(err.Error(), "tv/k2") {
			t.Errorf("%s: error must name the secret and not its value: %v", tc.name, err)
			continue
		}
		var fe *provider.FieldError
		if tc.want != nil && !errors.Is(err, tc.want) || tc.want == nil && !errors.As(err, &fe) {
			t.Errorf("%s: got %v", tc.name, err)
		}
	}
	if _, err := NewSecretsManager(&fakeSM{}, "tv/").Get(bg, "../../etc"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("invalid name must not become a secret id: %v", err)
	}
}

func TestSecretsManagerNamesPaginates(t *testing.T) {
	sm := &fakeSM{pages: [][]string{{"tv/a", "tv/b"}, {"tv/c", "other/x", "tv/Bad Name"}, {"tv/d"}}}
	names, err := NewSecretsManager(sm, "tv/").Names(bg)
	if err != nil || strings.Join(names, ",") != "a,b,c,d" {
		t.Fatalf("%v %v", names, err)
	}
}
