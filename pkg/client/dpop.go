package client

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
)

// setProofParams adds a request's DPoP parameters (dpop_htm, dpop_htu,
// dpop_nonce) with set, for either fetcher.
func setProofParams(r Request, set func(k, v string)) {
	if r.DPoPMethod != "" {
		set("dpop_htm", r.DPoPMethod)
	}
	if r.DPoPURL != "" {
		set("dpop_htu", r.DPoPURL)
	}
	if r.DPoPNonce != "" {
		set("dpop_nonce", r.DPoPNonce)
	}
}

// Proof asks the vendor for the token of r and a DPoP proof (RFC 9449)
// for the request method url, carrying nonce when the resource server
// demanded one. A proof is good for one request, so this always asks the
// vendor (which signs with the provider's DPoP key: the key never leaves
// it). A token the provider issued as Bearer comes without a proof.
func (c *Client) Proof(ctx context.Context, r Request, method, url, nonce string) (*Token, error) {
	r.DPoPMethod, r.DPoPURL, r.DPoPNonce, r.RejectedSHA256 = method, url, nonce, ""
	return c.f.Fetch(ctx, r)
}

// DPoPTransport sends each request with a DPoP-bound token of r
// (Authorization: DPoP <token>) and a proof for that request (the DPoP
// header), both from the vendor. When the resource server answers 401
// with error use_dpop_nonce and a DPoP-Nonce (RFC 9449 §9), it retries
// once with a proof carrying the nonce; nonces are remembered per origin
// and updated from any DPoP-Nonce the server sends. A token the provider
// issued as Bearer is sent as Bearer. base nil means http.DefaultTransport.
func (c *Client) DPoPTransport(base http.RoundTripper, r Request) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &dpopTransport{base: base, c: c, r: r}
}

type dpopTransport struct {
	base   http.RoundTripper
	c      *Client
	r      Request
	nonces sync.Map // scheme://host -> latest DPoP-Nonce
}

func (t *dpopTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	origin := req.URL.Scheme + "://" + req.URL.Host
	nonce, _ := t.nonces.Load(origin)
	n, _ := nonce.(string)
	resp, err := t.send(req, n)
	if err != nil {
		return nil, err
	}
	fresh := resp.Header.Get("DPoP-Nonce")
	if fresh != "" {
		t.nonces.Store(origin, fresh)
	}
	if resp.StatusCode != http.StatusUnauthorized || fresh == "" || fresh == n ||
		!strings.Contains(resp.Header.Get("WWW-Authenticate"), "use_dpop_nonce") || (req.Body != nil && req.GetBody == nil) {
		return resp, nil
	}
	retry := req.Clone(req.Context())
	if req.GetBody != nil {
		if retry.Body, err = req.GetBody(); err != nil {
			return resp, nil
		}
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return t.send(retry, fresh)
}

// send asks the vendor for the token and a proof for req, then sends it.
func (t *dpopTransport) send(req *http.Request, nonce string) (*http.Response, error) {
	// htu is the URL without query and fragment (RFC 9449 §4.2): the
	// query, which may hold what the caller would not share, stays here.
	htu := *req.URL
	htu.RawQuery, htu.ForceQuery, htu.Fragment, htu.RawFragment = "", false, "", ""
	tok, err := t.c.Proof(req.Context(), t.r, req.Method, htu.String(), nonce)
	if err != nil {
		return nil, err
	}
	out := req.Clone(req.Context())
	if tok.DPoPProof != "" {
		out.Header.Set("Authorization", "DPoP "+tok.AccessToken)
		out.Header.Set("DPoP", tok.DPoPProof)
	} else {
		out.Header.Set("Authorization", "Bearer "+tok.AccessToken)
		out.Header.Del("DPoP")
	}
	return t.base.RoundTrip(out)
}
