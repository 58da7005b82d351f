package envelope

import (
	"context"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// fakeKMS hands out one data key whose ciphertext names its context, and
// decrypts only under that context (as KMS does); fail replaces Decrypt's
// answer.
type fakeKMS struct{ fail error }

func (f *fakeKMS) GenerateDataKey(_ context.Context, in *kms.GenerateDataKeyInput, _ ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error) {
	return &kms.GenerateDataKeyOutput{Plaintext: make([]byte, 32), CiphertextBlob: []byte("edk:" + canonical(in.EncryptionContext))}, nil
}

func (f *fakeKMS) Decrypt(_ context.Context, in *kms.DecryptInput, _ ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	if string(in.CiphertextBlob) != "edk:"+canonical(in.EncryptionContext) {
		return nil, &kmstypes.InvalidCiphertextException{Message: new(string)}
	}
	return &kms.DecryptOutput{Plaintext: make([]byte, 32)}, nil
}

// TestOpenRefusesWhatWasNotSealedForTheRecord: a blob opens only under the
// KMS context and the bound fields it was sealed with; a changed field, an
// earlier format or a KMS refusal of the data key is ErrRefused, while KMS
// being unavailable is not (an outage, not an answer about the record).
func TestOpenRefusesWhatWasNotSealedForTheRecord(t *testing.T) {
	ctx := context.Background()
	ec := map[string]string{"provider": "p", "pk": "token#p#f#"}
	bound := map[string]string{"expires_at": "2000000000", "token_type": "Bearer"}
	api := &fakeKMS{}
	blob, err := New(api, "k").Seal(ctx, []byte("tok"), ec, bound)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := New(api, "k").Open(ctx, blob, ec, bound); err != nil || string(got) != "tok" {
		t.Fatalf("round trip: %q %v", got, err)
	}
	later := map[string]string{"expires_at": "2000003600", "token_type": "Bearer"}
	other := map[string]string{"provider": "p", "pk": "token#p#f#other"}
	old := append([]byte("tv1"), blob[3:]...)
	for name, try := range map[string]func() error{
		"another expiry":     func() error { _, err := New(api, "k").Open(ctx, blob, ec, later); return err },
		"another record":     func() error { _, err := New(api, "k").Open(ctx, blob, other, bound); return err },
		"the earlier format": func() error { _, err := New(api, "k").Open(ctx, old, ec, bound); return err },
		"garbage":            func() error { _, err := New(api, "k").Open(ctx, []byte("attacker-chosen"), ec, bound); return err },
	} {
		if err := try(); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v, want ErrRefused", name, err)
		}
	}
	api.fail = &kmstypes.KMSInternalException{Message: new(string)}
	if _, err := New(api, "k").Open(ctx, blob, ec, bound); err == nil || errors.Is(err, ErrRefused) {
		t.Errorf("KMS unavailable: %v, want an error that is not ErrRefused", err)
	}
}
