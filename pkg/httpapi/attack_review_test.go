package httpapi_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/token-vendor/token-vendor/pkg/httpapi"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

// brokenDefs is a definition source holding one secret whose definition
// does not load (as registry.SecretsManager reports a malformed secret).
type brokenDefs struct{ httpapi.Providers }

func (b brokenDefs) Get(ctx context.Context, name string) (*provider.Definition, error) {
	if name == "half-set-up" {
		return nil, fmt.Errorf("secret token-vendor/providers/half-set-up: %w", &provider.FieldError{Provider: name, Field: "token_url", Reason: "required"})
	}
	return b.Providers.Get(ctx, name)
}

// TestJWKSBrokenDefinitionIsNotFound: the JWKS route needs no IAM and must
// not tell which names exist. A secret under the prefix whose definition
// does not load serves no keys, so it answers the one 404 an unknown name
// gets, not a 500 telling an unauthenticated prober the secret exists.
func TestJWKSBrokenDefinitionIsNotFound(t *testing.T) {
	e := newEnv(t)
	static := registry.NewStatic(e.up.Defs)
	h := httpapi.New(vend.New(static, vendtest.Client(nil), e.st, vend.Options{}), brokenDefs{Providers: static}, nil, nil).WithJWKS(fakeKeys{})
	answer := func(name string) string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/providers/"+name+"/jwks.json", nil))
		return fmt.Sprintf("%d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	broken, unknown := answer("half-set-up"), answer("no-such-provider")
	if broken != strings.ReplaceAll(unknown, "no-such-provider", "half-set-up") {
		t.Fatalf("a secret whose definition does not load is told apart from an unknown name:\n%s\n%s", broken, unknown)
	}
}
