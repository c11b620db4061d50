// node-oidc-provider for bindgate's introspection tests (issue 17): client credentials tokens
// that are opaque, optionally bound to the client certificate (RFC 8705) or to a DPoP key
// (RFC 9449), introspection (RFC 7662) and revocation (RFC 7009). Started by the tests:
//   node provider.mjs PORT PKI_DIR        (PORT 0: any free port)
// It prints `listening PORT` once it listens. HTTPS with the test PKI's server certificate; client certificates requested, not required.
import https from 'node:https';
import fs from 'node:fs';
import crypto from 'node:crypto';
import path from 'node:path';
import Provider from 'oidc-provider';

const [port, pki] = process.argv.slice(2);
const read = (f) => fs.readFileSync(path.join(pki, f));
const client = (id, extra) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  scope: 'client-reg openid',
  token_endpoint_auth_method: 'client_secret_basic',
  ...extra,
});

const server = https.createServer({
  key: read('server.key'),
  cert: read('server.crt'),
  ca: read('ca.crt'),
  requestCert: true,
  rejectUnauthorized: false,
});
server.listen(Number(port), '127.0.0.1', () => {
  const bound = server.address().port;
  start(bound);
  console.log(`listening ${bound}`);
});

function start(bound) {
// The public key bindgate signs its private_key_jwt assertions with, when the test wrote one.
const assertionKey = path.join(pki, 'introspect.jwk.json');
const introspecting = (id, extra) => client(id, { grant_types: [], scope: undefined, ...extra });
const provider = new Provider(`https://localhost:${bound}`, {
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth'],
  clients: [
    introspecting('bindgate'),
    introspecting('bindgate-post', { token_endpoint_auth_method: 'client_secret_post' }),
    introspecting('bindgate-mtls', {
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_subject_dn: 'client1',
    }),
    ...(fs.existsSync(assertionKey)
      ? [introspecting('bindgate-jwt', {
        token_endpoint_auth_method: 'private_key_jwt',
        jwks: { keys: [JSON.parse(fs.readFileSync(assertionKey))] },
      })]
      : []),
    client('app'),
    client('mtls-app', { tls_client_certificate_bound_access_tokens: true }),
    client('dpop-app', { dpop_bound_access_tokens: true }),
  ],
  scopes: ['client-reg', 'openid'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    dPoP: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      // The socket verified the certificate against the test CA.
      certificateAuthorized: (ctx) => ctx.socket.authorized === true,
      // tls_client_auth_subject_dn is matched against the certificate's CN.
      certificateSubjectMatches(ctx, property, expected) {
        const peer = ctx.socket.getPeerCertificate?.();
        return property === 'tls_client_auth_subject_dn' && peer?.subject?.CN === expected;
      },
      getCertificate(ctx) {
        const peer = ctx.socket.getPeerCertificate?.();
        if (!peer || !peer.raw) return undefined;
        return new crypto.X509Certificate(peer.raw).toString();
      },
    },
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

server.on('request', provider.callback());
}
