// An independent OpenID Connect relying party (panva/openid-client, certified) used by the broker's
// end-to-end tests. Two phases, state passed through the test:
//   node rp.cjs start <issuer> <client_id> <client_secret|-> <redirect_uri> [extra-json]
//     -> prints {"url", "code_verifier", "nonce", "state"}
//   node rp.cjs finish <issuer> <client_id> <client_secret|-> <redirect_uri> <callback_url> <verifier> <nonce> <state>
//     -> discovers, redeems the code with PKCE, validates the ID token (signature against JWKS, iss, aud,
//        nonce, exp, at_hash), calls userinfo, prints {"claims", "userinfo", "tokens"}
const { Issuer, generators } = require('openid-client');

async function client(issuerUrl, clientId, secret, redirectUri) {
  const issuer = await Issuer.discover(issuerUrl);
  if (issuer.issuer !== issuerUrl) throw new Error(`issuer mismatch ${issuer.issuer} != ${issuerUrl}`);
  const meta = { client_id: clientId, redirect_uris: [redirectUri], response_types: ['code'] };
  if (secret === '-') meta.token_endpoint_auth_method = 'none';
  else { meta.client_secret = secret; meta.token_endpoint_auth_method = 'client_secret_basic'; }
  return new issuer.Client(meta);
}

async function main() {
  const [phase, issuerUrl, clientId, secret, redirectUri, ...rest] = process.argv.slice(2);
  const c = await client(issuerUrl, clientId, secret, redirectUri);
  if (phase === 'start') {
    const extra = rest[0] ? JSON.parse(rest[0]) : {};
    const code_verifier = generators.codeVerifier();
    const nonce = generators.nonce();
    const state = generators.state();
    const url = c.authorizationUrl({
      scope: 'openid email profile groups', code_challenge: generators.codeChallenge(code_verifier),
      code_challenge_method: 'S256', nonce, state, ...extra,
    });
    process.stdout.write(JSON.stringify({ url, code_verifier, nonce, state }));
    return;
  }
  const [callbackUrl, code_verifier, nonce, state] = rest;
  const params = c.callbackParams(callbackUrl);
  const tokens = await c.callback(redirectUri, params, { code_verifier, nonce, state });
  const userinfo = await c.userinfo(tokens.access_token);
  process.stdout.write(JSON.stringify({ claims: tokens.claims(), userinfo,
    tokens: { token_type: tokens.token_type, has_refresh: Boolean(tokens.refresh_token), scope: tokens.scope } }));
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
