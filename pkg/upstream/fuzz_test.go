package upstream

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func FuzzParseTokenResponse(f *testing.F) {
	f.Add(200, []byte(`{"access_token":"a","token_type":"Bearer","expires_in":"3600"}`), "")
	f.Add(400, []byte(`{"error":"invalid_client","error_description":"x"}`), "")
	f.Add(429, []byte(``), "120")
	f.Add(505, []byte(`<html>`), "Wed, 21 Oct 2015 07:28:00 GMT")
	f.Add(200, []byte(`{"access_token":"a","token_type":"Bearer","expires_in":1e999}`), "")
	f.Fuzz(func(t *testing.T, status int, body []byte, retryAfter string) {
		const secret = "fuzz-secret-xyz"
		h := http.Header{"Retry-After": {retryAfter}}
		tok, err := ParseTokenResponse("p", status, h, body, time.Unix(1e9, 0), "", ExpiryRules{DefaultExpiresIn: 60, MaxCacheSeconds: 86400}, secret)
		if err != nil {
			re, ok := AsRetrieveError(err)
			if !ok || re.RetryAfter < 0 || re.RetryAfter > time.Hour {
				t.Fatalf("bad error %#v", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatal("secret in error")
			}
			return
		}
		if tok.AccessToken == "" || tok.Lifetime < time.Second || tok.Lifetime > 86400*time.Second {
			t.Fatalf("bad token %+v", tok)
		}
	})
}
