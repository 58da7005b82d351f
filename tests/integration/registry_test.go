package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

func secretsClient(endpoint string) *secretsmanager.Client {
	return secretsmanager.NewFromConfig(testenv.Config(), func(o *secretsmanager.Options) { o.BaseEndpoint = aws.String(endpoint) })
}

func putDefinition(t *testing.T, sm *secretsmanager.Client, id string, d *provider.Definition) {
	t.Helper()
	b, _ := json.Marshal(d)
	_, err := sm.CreateSecret(context.Background(), &secretsmanager.CreateSecretInput{Name: aws.String(id), SecretString: aws.String(string(b))})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSecretsManagerRegistryOnMoto: definitions in each seed style, listed
// over several pages, read, missing, malformed.
func TestSecretsManagerRegistryOnMoto(t *testing.T) {
	sm := secretsClient(testenv.Moto(t))
	prefix := "tv-" + testenv.RandomSuffix() + "/providers/"
	up := vendtest.NewUpstream(t)
	for name, d := range up.Defs {
		putDefinition(t, sm, prefix+name, d)
	}
	for i := 0; i < 23; i++ {
		d := *up.Defs["demo-k2"]
		putDefinition(t, sm, fmt.Sprintf("%sextra-%02d", prefix, i), &d)
	}
	putDefinition(t, sm, "elsewhere/demo-k2", up.Defs["demo-k2"])
	_, err := sm.CreateSecret(context.Background(), &secretsmanager.CreateSecretInput{Name: aws.String(prefix + "broken"),
		SecretString: aws.String(`{"token_url":"https://x.example/t","client_id":"a","client_secret":"CANARY-broken","auth_method":"smoke-signals"}`)})
	if err != nil {
		t.Fatal(err)
	}
	src := registry.NewSecretsManager(sm, prefix)
	src.PageSize = 10
	names, err := src.Names(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 3+23+1 {
		t.Fatalf("listed %d providers across pages: %v", len(names), names)
	}
	for name, want := range up.Defs {
		got, err := src.Get(context.Background(), name)
		if err != nil || got.ClientSecret != want.ClientSecret || got.AuthMethod != want.AuthMethod || got.TokenURL != want.TokenURL {
			t.Fatalf("%s: %+v %v", name, got, err)
		}
	}
	if _, err := src.Get(context.Background(), "missing"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	_, err = src.Get(context.Background(), "broken")
	var fe *provider.FieldError
	if !errors.As(err, &fe) || fe.Field != "auth_method" || strings.Contains(err.Error(), "CANARY-broken") {
		t.Fatalf("malformed: %v", err)
	}
}

// TestRotationNeverInterruptsVending: the secret is rotated in Secrets
// Manager while the provider starts refusing the old one. Callers see no
// error while the cached token is valid, and the next upstream request uses
// the new secret.
func TestRotationNeverInterruptsVending(t *testing.T) {
	sm := secretsClient(testenv.Moto(t))
	ddb := testenv.DynamoDB(t)
	prefix := "tv-" + testenv.RandomSuffix() + "/providers/"
	up := vendtest.NewUpstream(t)
	putDefinition(t, sm, prefix+"demo-k2", up.Defs["demo-k2"])
	clock := vendtest.NewClock()
	reg := registry.NewCached(registry.NewSecretsManager(sm, prefix), registry.CacheOptions{Now: clock.Now, TTL: 3 * time.Hour})
	st := dynamostore.New(testenv.DynamoDBClient(ddb), testenv.NewTable(t, ddb))
	v := vend.New(reg, vendtest.Client(clock), st, vend.Options{Now: clock.Now, Sleep: clock.Sleep, DisableRefreshAhead: true})
	ctx := context.Background()
	first, err := v.Token(ctx, vend.Request{Provider: "demo-k2", MinTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	// Rotate: provider first, then the secret (the usual rotation order).
	if err := up.Server.Rotate("demo-k2-client", "rotated-secret-2"); err != nil {
		t.Fatal(err)
	}
	rotated := *up.Defs["demo-k2"]
	rotated.ClientSecret = "rotated-secret-2"
	b, _ := json.Marshal(&rotated)
	if _, err := sm.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String(prefix + "demo-k2"), SecretString: aws.String(string(b))}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ { // the cached token keeps being vended
		clock.Advance(time.Minute)
		tok, err := v.Token(ctx, vend.Request{Provider: "demo-k2", MinTTL: -1})
		if err != nil {
			t.Fatalf("caller error during rotation: %v", err)
		}
		if tok.AccessToken != first.AccessToken {
			break
		}
	}
	clock.Advance(20 * time.Minute) // past expiry: the next vend must fetch
	tok, err := v.Token(ctx, vend.Request{Provider: "demo-k2", MinTTL: -1})
	if err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if !up.Server.Valid(tok.AccessToken) || tok.AccessToken == first.AccessToken {
		t.Fatal("no new token with the rotated secret")
	}
	// One refused request with the cached old secret, then one with the re-read secret.
	if n := up.Server.Requests("demo-k2-client"); n != 3 {
		t.Fatalf("upstream requests %d, want 3 (first token, refused old secret, new secret)", n)
	}
	def, _ := reg.Get(ctx, "demo-k2")
	if def.ClientSecret != "rotated-secret-2" {
		t.Fatal("registry still holds the old secret")
	}
}
