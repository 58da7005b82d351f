package httpapi

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"sync"

	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// errBadCursor is the one answer for a cursor that does not open: altered,
// another caller's, another stack's, or not a cursor at all.
var errBadCursor = wire.Invalid("cursor: not one this API returned to you")

// cursorBox seals listing cursors with AES-256-GCM. The plaintext (the last
// record key a page looked at) names another provider as often as not, so
// it is encrypted, not merely signed; the caller's name is the additional
// data, so one caller's cursor does not page another caller's listing.
type cursorBox struct {
	key  func(context.Context) ([]byte, error)
	once sync.Mutex
	aead cipher.AEAD
}

// newCursorBox seals with the key key returns; nil: a random key of this
// process's own.
func newCursorBox(key func(context.Context) ([]byte, error)) *cursorBox {
	if key == nil {
		k := make([]byte, 32)
		rand.Read(k)
		key = func(context.Context) ([]byte, error) { return k, nil }
	}
	return &cursorBox{key: key}
}

func (b *cursorBox) cipher(ctx context.Context) (cipher.AEAD, error) {
	b.once.Lock()
	defer b.once.Unlock()
	if b.aead != nil {
		return b.aead, nil
	}
	k, err := b.key(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing cursor key: %w", err)
	}
	if len(k) < 32 {
		return nil, fmt.Errorf("listing cursor key: want at least 32 bytes, got %d", len(k))
	}
	// Any secret of 32 bytes or more: hashed down to the AES-256 key.
	sum := sha256.Sum256(k)
	block, err := aes.NewCipher(sum[:])
	if err != nil {
		return nil, err
	}
	if b.aead, err = cipher.NewGCM(block); err != nil {
		return nil, err
	}
	return b.aead, nil
}

func (b *cursorBox) seal(ctx context.Context, plain []byte) (string, error) {
	a, err := b.cipher(ctx)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, a.NonceSize())
	rand.Read(nonce)
	out := a.Seal(nonce, nonce, plain, []byte(identity.FromContext(ctx).Name()))
	return base64.RawURLEncoding.EncodeToString(out), nil
}

func (b *cursorBox) open(ctx context.Context, c string) ([]byte, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return nil, errBadCursor
	}
	a, err := b.cipher(ctx)
	if err != nil {
		return nil, err
	}
	if len(raw) < a.NonceSize()+a.Overhead() {
		return nil, errBadCursor
	}
	plain, err := a.Open(nil, raw[:a.NonceSize()], raw[a.NonceSize():], []byte(identity.FromContext(ctx).Name()))
	if err != nil {
		return nil, errBadCursor
	}
	return plain, nil
}
