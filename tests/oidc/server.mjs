// panva/oidc-provider configured as the authorization server for the
// private_key_jwt and mutual-TLS tests: one client per registration in
// CLIENTS (JSON: [{client_id, auth, jwks, jwks_uri, secret, subject_dn}], auth one of
// private_key_jwt (default), client_secret_jwt, tls_client_auth,
// self_signed_tls_client_auth),
// client_credentials only. With TLS_KEY, TLS_CERT and TLS_CA (PEM files) it
// serves HTTPS and asks for client certificates (requestCert), which it
// hands to oidc-provider's mTLS feature. It prints "listening <port>" once
// ready. GET /__assertions returns the header and claims of every client
// assertion the token endpoint received, decoded at the server side;
// GET /__dpop the header and claims of every DPoP proof. DPoP (RFC 9449) is
// on, for ES256, PS256 and RS256 proofs; with DPOP_NONCE set the token endpoint
// requires a server nonce. A client with dpop_bound must send a proof.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const clients = JSON.parse(process.env.CLIENTS || '[]').map((c) => ({
  client_id: c.client_id,
  token_endpoint_auth_method: c.auth || 'private_key_jwt',
  ...(c.jwks ? { jwks: c.jwks } : {}),
  ...(c.secret ? { client_secret: c.secret } : {}),
  ...(c.jwks_uri ? { jwks_uri: c.jwks_uri } : {}),
  ...(c.subject_dn ? { tls_client_auth_subject_dn: c.subject_dn } : {}),
  ...(c.dpop_bound ? { dpop_bound_access_tokens: true } : {}),
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'read write',
}));
const tls = process.env.TLS_KEY ? {
  key: fs.readFileSync(process.env.TLS_KEY),
  cert: fs.readFileSync(process.env.TLS_CERT),
  ca: fs.readFileSync(process.env.TLS_CA),
  requestCert: true,
  rejectUnauthorized: false, // the provider decides, as client authentication
} : null;
const peer = (ctx) => {
  const c = ctx.socket.getPeerCertificate && ctx.socket.getPeerCertificate();
  return c && c.raw ? new crypto.X509Certificate(c.raw) : undefined;
};

const seen = [];
const proofs = [];
const provider = new Provider(`${tls ? 'https' : 'http'}://127.0.0.1:${port}`, {
  clients,
  clientAuthMethods: tls ? ['private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth'] : ['private_key_jwt', 'client_secret_jwt'],
  scopes: ['read', 'write'],
  enabledJWA: { dPoPSigningAlgValues: ['ES256', 'PS256', 'RS256'] },
  // The vendor's jwks_uri is on loopback in these tests, which
  // oidc-provider's SSRF guard (rightly) refuses: fetch without it.
  fetch: (url, { dispatcher, ...options }) => globalThis.fetch(url, options),
  features: {
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    // RFC 8707: a token for a named resource is a JWT whose aud is it.
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo: (ctx, resourceIndicator) => ({
        scope: 'read write', audience: resourceIndicator, accessTokenFormat: 'jwt', accessTokenTTL: 3600,
      }),
    },
    devInteractions: { enabled: false },
    dPoP: {
      enabled: true,
      ...(process.env.DPOP_NONCE ? { nonceSecret: crypto.randomBytes(32), requireNonce: () => true } : {}),
    },
    mTLS: {
      enabled: !!tls,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate: peer,
      certificateAuthorized: (ctx) => ctx.socket.authorized,
      certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_subject_dn'
        && peer(ctx)?.subject.split('\n').reverse().join(',') === expected,
    },
  },
});

provider.use(async (ctx, next) => {
  if (ctx.path === '/__assertions') {
    ctx.body = seen;
    return;
  }
  if (ctx.path === '/__dpop') {
    ctx.body = proofs;
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/token') {
    // Read the form here (oidc-provider takes a parsed body) and record the
    // assertion as the server sees it.
    const chunks = [];
    for await (const c of ctx.req) chunks.push(c);
    const raw = Buffer.concat(chunks).toString();
    ctx.req.body = raw;
    const p = ctx.get('DPoP');
    if (p) {
      try {
        const [header, claims] = p.split('.').slice(0, 2).map((s) => JSON.parse(Buffer.from(s, 'base64url').toString()));
        proofs.push({ header, claims });
      } catch { /* malformed: the provider refuses it */ }
    }
    const a = new URLSearchParams(raw).get('client_assertion');
    if (a) {
      try {
        const [header, claims] = a.split('.').slice(0, 2).map((s) => JSON.parse(Buffer.from(s, 'base64url').toString()));
        seen.push({ header, claims });
      } catch { /* malformed: the provider refuses it */ }
    }
  }
  await next();
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
if (process.env.DEBUG_GRANTS) provider.on('grant.error', (ctx, err) => console.error('grant.error', err.message, err.error_description, err.cause?.message, err.cause?.cause?.message));

if (tls) {
  const srv = https.createServer(tls, provider.callback());
  srv.listen(port, '127.0.0.1', () => console.log(`listening ${srv.address().port}`));
} else {
  const srv = provider.listen(port, '127.0.0.1', () => console.log(`listening ${srv.address().port}`));
}
