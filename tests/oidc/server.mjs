// panva/oidc-provider configured as the authorization server for the
// private_key_jwt tests: one client per registration in CLIENTS (JSON:
// [{client_id, jwks}]), client_credentials only. It prints
// "listening <port>" once ready. GET /__assertions returns the header and
// claims of every client assertion the token endpoint received, decoded at
// the server side.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const clients = JSON.parse(process.env.CLIENTS || '[]').map((c) => ({
  client_id: c.client_id,
  token_endpoint_auth_method: 'private_key_jwt',
  jwks: c.jwks,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'read write',
}));

const seen = [];
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients,
  scopes: ['read', 'write'],
  features: {
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: false },
  },
});

provider.use(async (ctx, next) => {
  if (ctx.path === '/__assertions') {
    ctx.body = seen;
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/token') {
    // Read the form here (oidc-provider takes a parsed body) and record the
    // assertion as the server sees it.
    const chunks = [];
    for await (const c of ctx.req) chunks.push(c);
    const raw = Buffer.concat(chunks).toString();
    ctx.req.body = raw;
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

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
