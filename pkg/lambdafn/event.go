package lambdafn

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"

	"github.com/token-vendor/token-vendor/pkg/identity"
	"github.com/token-vendor/token-vendor/pkg/wire"
)

// InvokeFunc is the direct-invoke handler. As a lambda.Handler it is handed
// the event's bytes as Lambda sent them and decodes them once: the reflective
// adapter of lambda.NewHandler would decode them into a json.RawMessage
// first, and the handler strictly again, scanning a 1-2 KB event (most of
// it the identity proof) about four times per vend.
type InvokeFunc func(context.Context, json.RawMessage) (wire.TokenResponse, error)

// Invoke implements lambda.Handler as lambda.NewHandler would for f, with
// the same JSON encoding of the response (HTML not escaped, no trailing
// newline), but reading the event once where it is in the shape callers
// send (fastDecode). Any other payload takes the adapter's steps exactly:
// its decode into a json.RawMessage (whose error it returns as is), then f.
func (f InvokeFunc) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	var resp wire.TokenResponse
	var err error
	ev := new(InvokeEvent)
	if len(payload) <= maxEventBody && fastDecode(payload, ev) {
		resp, err = f(context.WithValue(ctx, decodedKey{}, ev), payload)
	} else {
		var raw json.RawMessage
		if err := json.NewDecoder(bytes.NewReader(payload)).Decode(&raw); err != nil {
			return nil, err
		}
		resp, err = f(ctx, raw)
	}
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(512)
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(resp); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// decodedKey carries the event InvokeFunc.Invoke already read to the
// handler, which then does not read its bytes again.
type decodedKey struct{}

// decodeEvent sets ev to the event the handler was given: already read by
// InvokeFunc.Invoke, or in one pass where fastDecode can, or strictly
// (strictDecode, with its InvalidRequest errors). What fastDecode accepts,
// strictDecode accepts with the same result.
func decodeEvent(ctx context.Context, raw []byte, ev **InvokeEvent) error {
	if pre, ok := ctx.Value(decodedKey{}).(*InvokeEvent); ok {
		*ev = pre
		return nil
	}
	*ev = new(InvokeEvent)
	if len(raw) <= maxEventBody && fastDecode(raw, *ev) {
		return nil
	}
	**ev = InvokeEvent{}
	return strictDecode(raw, *ev)
}

// fastDecode is decodeEvent's one-pass reading; false means "not in the
// plain shape", never "invalid": the careful path decides that.
func fastDecode(b []byte, ev *InvokeEvent) bool {
	s := scanner{b: b}
	s.ws()
	if !s.eat('{') {
		return false
	}
	var seen uint16
	s.ws()
	if s.eat('}') {
		return s.end()
	}
	for {
		s.ws()
		key, ok := s.str()
		if !ok {
			return false
		}
		s.ws()
		if !s.eat(':') {
			return false
		}
		s.ws()
		var bit uint16
		switch string(key) {
		case "provider":
			bit, ok = 1<<0, s.strField(&ev.Provider)
		case "scope":
			bit, ok = 1<<1, s.strField(&ev.Scope)
		case "resource":
			bit, ok = 1<<2, s.strField(&ev.Resource)
		case "audience":
			bit, ok = 1<<3, s.strField(&ev.Audience)
		case "min_ttl":
			var n int64
			bit, n, ok = 1<<4, 0, false
			if n, ok = s.int(); ok {
				ev.MinTTL = &n
			}
		case "rejected_token_sha256":
			bit, ok = 1<<5, s.strField(&ev.RejectedTokenSHA256)
		case "dpop_htm":
			bit, ok = 1<<6, s.strField(&ev.DPoPHTM)
		case "dpop_htu":
			bit, ok = 1<<7, s.strField(&ev.DPoPHTU)
		case "dpop_nonce":
			bit, ok = 1<<8, s.strField(&ev.DPoPNonce)
		case "dpop_count":
			var n int64
			if n, ok = s.int(); ok {
				c := int(n)
				ev.DPoPCount = &c
			}
			bit = 1 << 10
		case "identity":
			bit = 1 << 9
			ev.Identity = &identity.Proof{}
			ok = s.proof(ev.Identity)
		default:
			// Unknown, or known in another case (encoding/json matches
			// field names case-insensitively): the careful path.
			return false
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		s.ws()
		if s.eat('}') {
			return s.end()
		}
		if !s.eat(',') {
			return false
		}
	}
}

func (s *scanner) proof(p *identity.Proof) bool {
	if !s.eat('{') {
		return false
	}
	var seen uint8
	s.ws()
	if s.eat('}') {
		return true
	}
	for {
		s.ws()
		key, ok := s.str()
		if !ok {
			return false
		}
		s.ws()
		if !s.eat(':') {
			return false
		}
		s.ws()
		var bit uint8
		switch string(key) {
		case "iam_http_request_method":
			bit, ok = 1<<0, s.strField(&p.Method)
		case "iam_request_url":
			bit, ok = 1<<1, s.strField(&p.URL)
		case "iam_request_body":
			bit, ok = 1<<2, s.strField(&p.Body)
		case "iam_request_headers":
			bit, ok = 1<<3, s.strField(&p.Headers)
		default:
			return false
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		s.ws()
		if s.eat('}') {
			return true
		}
		if !s.eat(',') {
			return false
		}
	}
}

type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end is true when only whitespace follows.
func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// str reads a string of printable ASCII without escapes, returning its
// contents (aliasing the input). Most of an event is the proof's base64,
// so the string is found with IndexByte and checked eight bytes at a time.
func (s *scanner) str() ([]byte, bool) {
	if !s.eat('"') {
		return nil, false
	}
	n := bytes.IndexByte(s.b[s.i:], '"')
	if n < 0 {
		return nil, false
	}
	v := s.b[s.i : s.i+n]
	if !plain(v) {
		return nil, false
	}
	s.i += n + 1
	return v, true
}

// plain is true when v holds no backslash, control character or byte
// outside ASCII.
func plain(v []byte) bool {
	if bytes.IndexByte(v, '\\') >= 0 {
		return false
	}
	const lo, hi = 0x2020202020202020, 0x8080808080808080
	for len(v) >= 8 {
		x := binary.LittleEndian.Uint64(v)
		// A byte of x-lo has its high bit set where x's byte is below
		// 0x20 (or a lower one was); x's own high bits are the non-ASCII.
		if ((x-lo)|x)&hi != 0 {
			return false
		}
		v = v[8:]
	}
	for _, c := range v {
		if c < 0x20 || c >= 0x80 {
			return false
		}
	}
	return true
}

func (s *scanner) strField(dst *string) bool {
	v, ok := s.str()
	if ok {
		*dst = string(v)
	}
	return ok
}

// int reads an integer as JSON writes one (no fraction or exponent), at
// most 18 digits so it cannot overflow.
func (s *scanner) int() (int64, bool) {
	neg := s.eat('-')
	start := s.i
	var n int64
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		n = n*10 + int64(s.b[s.i]-'0')
		s.i++
	}
	digits := s.i - start
	if digits == 0 || digits > 18 || (digits > 1 && s.b[start] == '0') {
		return 0, false
	}
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	if neg {
		n = -n
	}
	return n, true
}
