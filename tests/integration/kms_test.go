package integration

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/token-vendor/token-vendor/pkg/envelope"
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
	if _, err := sealer.Open(ctx, it.Token.Sealed, map[string]string{"provider": "demo-k2", "pk": pk + "x"}); err == nil {
		t.Fatal("sealed token opened under another encryption context")
	}
	// Without the key configured, a sealed record is treated as absent, not vended.
	v3 := vend.New(vendtest.NewProviders(up.Defs), fake, st, vend.Options{L1MaxAge: -1})
	if tok3, err := v3.Token(ctx, vend.Request{Provider: "demo-k2", MinTTL: -1}); err != nil || fake.calls != 2 || tok3.Source != vend.FromUpstream {
		t.Fatalf("instance without KMS: %v calls %d", err, fake.calls)
	}
}
