package registry

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

// SecretsManagerAPI is the part of the Secrets Manager client used here.
type SecretsManagerAPI interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
	ListSecrets(ctx context.Context, in *secretsmanager.ListSecretsInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.ListSecretsOutput, error)
}

// DefaultPrefix is where provider secrets live unless configured otherwise.
const DefaultPrefix = "token-vendor/providers/"

// SecretsManager reads provider definitions from secrets named prefix+name,
// whose SecretString is the definition JSON.
type SecretsManager struct {
	api    SecretsManagerAPI
	prefix string
	// PageSize is ListSecrets' MaxResults (100).
	PageSize int32
}

// NewSecretsManager returns a source over secrets under prefix.
func NewSecretsManager(api SecretsManagerAPI, prefix string) *SecretsManager {
	return &SecretsManager{api: api, prefix: prefix, PageSize: 100}
}

// ErrListingOff is what Names returns where listing provider secrets is
// turned off: in AWS, secretsmanager:ListSecrets cannot be limited to a
// prefix, so the template neither grants nor uses it.
var ErrListingOff = errors.New("listing provider secrets is turned off (LIST_PROVIDER_SECRETS=false)")

// ErrAccessDenied means the function's role may not read the secret: an
// operator error, reported with the secret's name.
var ErrAccessDenied = errors.New("access to the provider secret denied")

// Get reads and validates one definition.
func (s *SecretsManager) Get(ctx context.Context, name string) (*provider.Definition, error) {
	if !provider.ValidName(name) {
		// Never turn an arbitrary path segment into a secret id.
		return nil, fmt.Errorf("%w: %q", provider.ErrNotFound, truncate(name))
	}
	id := s.prefix + name
	out, err := s.api.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(id)})
	if err != nil {
		return nil, classify(id, name, err)
	}
	if out.SecretString == nil {
		return nil, fmt.Errorf("secret %s: %w", id, &provider.FieldError{Provider: name, Reason: "secret must hold the definition JSON as SecretString"})
	}
	d, err := provider.Parse(name, []byte(aws.ToString(out.SecretString)))
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", id, err)
	}
	return d, nil
}

// Reload is Get: there is no cache at this level.
func (s *SecretsManager) Reload(ctx context.Context, name string) (*provider.Definition, error) {
	return s.Get(ctx, name)
}

// Names lists the providers under the prefix, following every page.
func (s *SecretsManager) Names(ctx context.Context) ([]string, error) {
	in := &secretsmanager.ListSecretsInput{
		Filters:    []smtypes.Filter{{Key: smtypes.FilterNameStringTypeName, Values: []string{s.prefix}}},
		MaxResults: aws.Int32(s.PageSize),
	}
	var names []string
	p := secretsmanager.NewListSecretsPaginator(s.api, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, classify(s.prefix+"*", "", err)
		}
		for _, e := range page.SecretList {
			// The name filter matches prefixes of words; keep exact prefix matches.
			n, ok := strings.CutPrefix(aws.ToString(e.Name), s.prefix)
			if ok && provider.ValidName(n) && e.DeletedDate == nil {
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	return names, nil
}

func classify(id, name string, err error) error {
	var nf *smtypes.ResourceNotFoundException
	if errors.As(err, &nf) {
		return fmt.Errorf("%w: %q (no secret %s)", provider.ErrNotFound, name, id)
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "AccessDeniedException":
			return fmt.Errorf("secret %s: %w", id, ErrAccessDenied)
		case "DecryptionFailure":
			return fmt.Errorf("secret %s: cannot decrypt (check the secret's KMS key policy): %w", id, ErrAccessDenied)
		}
	}
	// Throttling and 5xx were already retried by the SDK.
	return fmt.Errorf("secret %s: %w: %w", id, provider.ErrSourceUnavailable, err)
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
