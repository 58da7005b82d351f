// Package envelope seals access tokens at rest with KMS envelope encryption:
// a KMS data key per cache record, AES-256-GCM over the token, and as GCM
// additional data the KMS encryption context plus the record fields the
// caller binds (expiry, issue time, type, scope, target). Reading the table
// alone therefore yields no usable token; a sealed token copied to another
// record, or put back under another expiry, does not open; and only a holder
// of a data key (KMS Decrypt under the record's context) can make a blob
// that does.
//
// The bound fields are not in the KMS encryption context on purpose: they
// change with every token, and a KMS context per token would cost a
// GenerateDataKey per write and a Decrypt per token per instance. The data
// key stays bound to the record by KMS ({provider, pk}); GCM binds the rest
// under it, which no one without the data key can forge.
package envelope

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// KMS is the part of the KMS client the sealer uses.
type KMS interface {
	GenerateDataKey(ctx context.Context, in *kms.GenerateDataKeyInput, optFns ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error)
	Decrypt(ctx context.Context, in *kms.DecryptInput, optFns ...func(*kms.Options)) (*kms.DecryptOutput, error)
}

const (
	// magic "tv2": the additional data binds the record fields too. "tv1"
	// blobs (context only) are refused: a record sealed before the upgrade
	// is fetched again once.
	magic      = "tv2"
	maxCached  = 4096
	dataKeyTTL = time.Hour
)

// ErrRefused is the class of errors that say the blob is not a token sealed
// by this key for this record (malformed, an earlier format, made for
// another record or other record fields, another key). Such a record is
// to be treated as absent; every other error (KMS throttled, unreachable,
// access denied) says nothing about the record and is an outage.
var ErrRefused = errors.New("envelope: not a token sealed for this record")

// ErrMalformed is returned for a blob this package did not produce in its
// current format.
var ErrMalformed = fmt.Errorf("%w: malformed sealed token or an earlier format", ErrRefused)

type dataKey struct {
	plain, encrypted []byte
	created          time.Time
}

// Sealer encrypts and decrypts with one KMS key. Decrypted data keys are
// cached per instance so a warm instance opens tokens without calling KMS.
type Sealer struct {
	api   KMS
	keyID string
	now   func() time.Time

	mu   sync.Mutex
	seal map[string]dataKey // encryption context -> key used for new seals
	open map[string][]byte  // encrypted data key -> plaintext data key
}

// New returns a sealer for the KMS key (id, ARN or alias).
func New(api KMS, keyID string) *Sealer {
	return &Sealer{api: api, keyID: keyID, now: time.Now, seal: map[string]dataKey{}, open: map[string][]byte{}}
}

// Seal encrypts plaintext under a data key bound to ec (the KMS encryption
// context) and authenticates ec and bound with it.
func (s *Sealer) Seal(ctx context.Context, plaintext []byte, ec, bound map[string]string) ([]byte, error) {
	kctx := canonical(ec)
	dk, err := s.dataKeyFor(ctx, kctx, ec)
	if err != nil {
		return nil, err
	}
	gcm, err := newGCM(dk.plain)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(magic)+2+len(dk.encrypted)+gcm.NonceSize()+len(plaintext)+gcm.Overhead())
	out = append(out, magic...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(dk.encrypted)))
	out = append(out, dk.encrypted...)
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("envelope: nonce: %w", err)
	}
	out = append(out, nonce...)
	return gcm.Seal(out, nonce, plaintext, additionalData(kctx, bound)), nil
}

// Open decrypts a blob made by Seal with the same ec and bound. A blob that
// is not such a token is an error wrapping ErrRefused.
func (s *Sealer) Open(ctx context.Context, blob []byte, ec, bound map[string]string) ([]byte, error) {
	if len(blob) < len(magic)+2 || string(blob[:len(magic)]) != magic {
		return nil, ErrMalformed
	}
	rest := blob[len(magic):]
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) < n+12 {
		return nil, ErrMalformed
	}
	edk, rest := rest[:n], rest[n:]
	kctx := canonical(ec)
	key, err := s.plainKey(ctx, edk, ec, kctx)
	if err != nil {
		return nil, err
	}
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(rest) < gcm.NonceSize() {
		return nil, ErrMalformed
	}
	pt, err := gcm.Open(nil, rest[:gcm.NonceSize()], rest[gcm.NonceSize():], additionalData(kctx, bound))
	if err != nil {
		return nil, fmt.Errorf("%w: it does not authenticate under this record's context and fields", ErrRefused)
	}
	return pt, nil
}

func (s *Sealer) dataKeyFor(ctx context.Context, kctx string, ec map[string]string) (dataKey, error) {
	s.mu.Lock()
	dk, ok := s.seal[kctx]
	s.mu.Unlock()
	if ok && s.now().Sub(dk.created) < dataKeyTTL {
		return dk, nil
	}
	out, err := s.api.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId:             aws.String(s.keyID),
		KeySpec:           kmstypes.DataKeySpecAes256,
		EncryptionContext: ec,
	})
	if err != nil {
		return dataKey{}, fmt.Errorf("envelope: generate data key: %w", err)
	}
	dk = dataKey{plain: out.Plaintext, encrypted: out.CiphertextBlob, created: s.now()}
	if len(dk.encrypted) > 0xffff || len(dk.plain) != 32 {
		return dataKey{}, errors.New("envelope: unexpected data key from KMS")
	}
	s.mu.Lock()
	if len(s.seal) >= maxCached {
		clear(s.seal)
	}
	s.seal[kctx] = dk
	s.remember(kctx, dk.encrypted, dk.plain)
	s.mu.Unlock()
	return dk, nil
}

func (s *Sealer) plainKey(ctx context.Context, edk []byte, ec map[string]string, kctx string) ([]byte, error) {
	s.mu.Lock()
	key, ok := s.open[kctx+"\x00"+string(edk)]
	s.mu.Unlock()
	if ok {
		return key, nil
	}
	out, err := s.api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: edk, EncryptionContext: ec, KeyId: aws.String(s.keyID)})
	var invalid *kmstypes.InvalidCiphertextException
	var otherKey *kmstypes.IncorrectKeyException
	switch {
	case errors.As(err, &invalid) || errors.As(err, &otherKey):
		// KMS says the data key was not made for this context or key:
		// an answer about the record, not an outage.
		return nil, fmt.Errorf("%w: decrypt data key: %w", ErrRefused, err)
	case err != nil:
		return nil, fmt.Errorf("envelope: decrypt data key: %w", err)
	}
	s.mu.Lock()
	s.remember(kctx, edk, out.Plaintext)
	s.mu.Unlock()
	return out.Plaintext, nil
}

// remember caches a data key; callers hold s.mu. The cache is bounded by
// dropping it whole, which only costs KMS calls.
func (s *Sealer) remember(kctx string, edk, plain []byte) {
	if len(s.open) >= maxCached {
		clear(s.open)
	}
	s.open[kctx+"\x00"+string(edk)] = plain
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return cipher.NewGCM(block)
}

// additionalData is what GCM authenticates besides the token: the KMS
// context and the bound record fields, each rendered canonically.
func additionalData(kctx string, bound map[string]string) []byte {
	return []byte(magic + "|" + kctx + "|" + canonical(bound))
}

// canonical renders ec deterministically for use as GCM additional data.
func canonical(ec map[string]string) string {
	keys := make([]string, 0, len(ec))
	for k := range ec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%d:%s=%d:%s;", len(k), k, len(ec[k]), ec[k])
	}
	return b.String()
}
