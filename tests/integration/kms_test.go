package integration

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/token-vendor/token-vendor/pkg/envelope"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func newKMSKey(t *testing.T, endpoint string) (*kms.Client, string) {
	t.Helper()
	c := kms.NewFromConfig(testenv.Config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(endpoint) })
	out, err := c.CreateKey(context.Background(), &kms.CreateKeyInput{Description: aws.String("token-vendor test")})
	if err != nil {
		t.Fatal(err)
	}
	return c, aws.ToString(out.KeyMetadata.KeyId)
}

// TestTokensSealedAtRest: with a KMS key (moto) the table holds no usable
// token, a token over 4 KiB round-trips, and a sealed token moved to another
// record does not open (the encryption context binds it to its pk).
func TestTokensSealedAtRest(t *testing.T) {
	ddbEP, motoEP := testenv.DynamoDB(t), testenv.Moto(t)
	kc, keyID := newKMSKey(t, motoEP)
	table := testenv.NewTable(t, ddbEP)
	st := dynamostore.New(testenv.DynamoDBClient(ddbEP), table)
	up := vendtest.NewUpstream(t)
	ctx := context.Background()

	big := strings.Repeat("J", 6000) // a JWT-sized giant, over KMS's 4 KiB Encrypt limit
	fake := &fixedFetcher{token: big}
	v := vend.New(vendtest.NewProviders(up.Defs), fake, st, vend.Options{Sealer: envelope.New(kc, keyID), L1MaxAge: -1})
	tok, err := v.Token(ctx, vend.Request{Provider: "demo-k2", MinTTL: -1})
	if err != nil || tok.AccessToken != big {
		t.Fatalf("%v", err)
	}
	pk := up.Defs["demo-k2"].KeyFor(nil).PK
	it, err := st.Get(ctx, pk, true)
	if err != nil {
		t.Fatal(err)
	}
	if it.Token.Plain != "" || len(it.Token.Sealed) == 0 || strings.Contains(string(it.Token.Sealed), "JJJJ") {
		t.Fatal("token stored in the clear")
	}
	// A fresh instance (cold data-key cache) opens it through KMS Decrypt.
	v2 := vend.New(vendtest.NewProviders(up.Defs), fake, st, vend.Options{Sealer: envelope.New(kc, keyID), L1MaxAge: -1})
	tok2, err := v2.Token(ctx, vend.Request{Provider: "demo-k2", MinTTL: -1})
	if err != nil || tok2.AccessToken != big || tok2.Source != vend.FromL2 || fake.calls != 1 {
		t.Fatalf("second instance: source %s err %v calls %d", tok2.Source, err, fake.calls)
	}
	// Copying the sealed blob to another key's record yields nothing usable.
	sealer := envelope.New(kc, keyID)
	if _, err := sealer.Open(ctx, it.Token.Sealed, map[string]string{"provider": "demo-k2", "pk": pk + "x"}, nil); err == nil {
		t.Fatal("sealed token opened under another encryption context")
	}
	// Without the key configured, a sealed record is treated as absent, not vended.
	v3 := vend.New(vendtest.NewProviders(up.Defs), fake, st, vend.Options{L1MaxAge: -1})
	if tok3, err := v3.Token(ctx, vend.Request{Provider: "demo-k2", MinTTL: -1}); err != nil || fake.calls != 2 || tok3.Source != vend.FromUpstream {
		t.Fatalf("instance without KMS: %v calls %d", err, fake.calls)
	}
}

// eventCounter counts the core's events (obs metric names are mapped from them).
type eventCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (e *eventCounter) Vended(string, vend.Source, time.Duration) {}
func (e *eventCounter) Upstream(string, time.Duration, string)    {}
func (e *eventCounter) Value(string, string, string, float64)     {}
func (e *eventCounter) Event(_, name string)                      { e.mu.Lock(); e.n[name]++; e.mu.Unlock() }
func (e *eventCounter) count(name string) int                     { e.mu.Lock(); defer e.mu.Unlock(); return e.n[name] }

// sealedWorld is one table and KMS key with a sealed record of demo-k2 in
// it, and a way to read it as a new instance (no L1, a cold data-key cache)
// and to overwrite it as a writer with dynamodb:PutItem and no KMS use.
type sealedWorld struct {
	t      *testing.T
	st     *dynamostore.Store
	pk     string
	fake   *fixedFetcher
	events *eventCounter
	logs   lockedWriter
	vendor func() *vend.Vendor
}

func newSealedWorld(t *testing.T) *sealedWorld {
	ddbEP, motoEP := testenv.DynamoDB(t), testenv.Moto(t)
	kc, keyID := newKMSKey(t, motoEP)
	up := vendtest.NewUpstream(t)
	w := &sealedWorld{t: t, st: dynamostore.New(testenv.DynamoDBClient(ddbEP), testenv.NewTable(t, ddbEP)), pk: up.Defs["demo-k2"].KeyFor(nil).PK,
		fake: &fixedFetcher{token: "genuine-1"}, events: &eventCounter{n: map[string]int{}}, logs: lockedWriter{&bytes.Buffer{}, &sync.Mutex{}}}
	w.vendor = func() *vend.Vendor {
		return vend.New(vendtest.NewProviders(up.Defs), w.fake, w.st, vend.Options{Sealer: envelope.New(kc, keyID), L1MaxAge: -1,
			DisableRefreshAhead: true, Observer: w.events, Logger: slog.New(slog.NewJSONHandler(w.logs, nil))})
	}
	if tok := w.vend(); tok.AccessToken != "genuine-1" || w.fake.calls != 1 {
		t.Fatalf("first vend: %q, %d fetches", tok.AccessToken, w.fake.calls)
	}
	return w
}

func (w *sealedWorld) vend() vend.Token {
	w.t.Helper()
	tok, err := w.vendor().Token(context.Background(), vend.Request{Provider: "demo-k2", MinTTL: -1})
	if err != nil {
		w.t.Fatal(err)
	}
	return tok
}

func (w *sealedWorld) record() *store.Item {
	w.t.Helper()
	it, err := w.st.Get(context.Background(), w.pk, true)
	if err != nil || it == nil {
		w.t.Fatalf("read record: %v", err)
	}
	return it
}

func (w *sealedWorld) overwrite(change func(*store.Item)) {
	w.t.Helper()
	it := w.record()
	prev := it.Version
	change(it)
	it.Version = prev + 1
	if err := w.st.Put(context.Background(), it, prev); err != nil {
		w.t.Fatal(err)
	}
}

// refused checks the forged record was treated as absent: a fresh token
// from upstream, counted, logged without any token, the record sealed again.
func (w *sealedWorld) refused(forged, next string, fetches, counted int) {
	w.t.Helper()
	w.fake.token = next
	tok := w.vend()
	if tok.AccessToken == forged {
		w.t.Fatalf("the forged record's token %q was vended", forged)
	}
	if tok.AccessToken != next || tok.Source != vend.FromUpstream || w.fake.calls != fetches {
		w.t.Fatalf("got %q from %s after %d fetches; want a fresh token from upstream", tok.AccessToken, tok.Source, w.fake.calls)
	}
	if n := w.events.count("unsealed_record"); n != counted {
		w.t.Fatalf("unsealed_record counted %d times, want %d", n, counted)
	}
	if it := w.record(); len(it.Token.Sealed) == 0 || it.Token.Plain != "" {
		w.t.Fatal("the record was not sealed again")
	}
	// A genuine record still opens on a cold instance, without a fetch.
	if tok := w.vend(); tok.AccessToken != next || tok.Source != vend.FromL2 || w.fake.calls != fetches {
		w.t.Fatalf("genuine record: %q from %s, %d fetches", tok.AccessToken, tok.Source, w.fake.calls)
	}
	logs := w.logs.String()
	if !strings.Contains(logs, "no valid sealed token") {
		w.t.Error("the refused record was not logged")
	}
	for _, secret := range []string{forged, "genuine-1", next} {
		if strings.Contains(logs, secret) {
			w.t.Errorf("a token (%s) reached the logs", secret)
		}
	}
}

// TestSealedRecordPlaintextSwap: with sealing on, a plaintext token written
// over a sealed record (dynamodb:PutItem, no KMS) is not vended.
func TestSealedRecordPlaintextSwap(t *testing.T) {
	w := newSealedWorld(t)
	w.overwrite(func(it *store.Item) { it.Token = store.Secret{Plain: "attacker-chosen"} })
	w.refused("attacker-chosen", "genuine-2", 2, 1)
}

// TestSealedRecordStaleReplay: a genuine sealed token put back later under
// a new expiry (and issue time), or under another token type, does not open:
// the seal binds the record's fields, not only provider and pk.
func TestSealedRecordStaleReplay(t *testing.T) {
	w := newSealedWorld(t)
	old := w.record()
	w.fake.token = "genuine-2"
	if _, err := w.vendor().Refresh(context.Background(), vend.Request{Provider: "demo-k2", MinTTL: -1}); err != nil {
		t.Fatal(err)
	}
	w.overwrite(func(it *store.Item) {
		it.Token = old.Token
		it.IssuedAt, it.ExpiresAt, it.RefreshAt = it.IssuedAt+600, it.ExpiresAt+600, it.RefreshAt+600
	})
	w.refused("genuine-1", "genuine-3", 3, 1)
	w.overwrite(func(it *store.Item) { it.TokenType = "DPoP" })
	w.refused("genuine-3", "genuine-4", 4, 2)
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
