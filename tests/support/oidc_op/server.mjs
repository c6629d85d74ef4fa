// A real OpenID Provider for end-to-end tests: panva/oidc-provider (OpenID Certified), on 127.0.0.1.
//
// Started by tests/support/oidc_op.py. Configuration comes as JSON in the OIDC_OP_CONFIG environment
// variable: { "clients": [...oidc-provider client metadata...], "accounts": { "<login>": { "password":
// "...", "claims": {...} } } }. The server listens on an ephemeral port, builds the issuer from it, and
// prints one JSON line {"ready": true, "issuer": "...", "port": N} on stdout when it accepts requests.
//
// Interactions are a minimal custom login + consent UI (plain HTML forms) so a test can drive them with a
// requests.Session:
//   GET  /interaction/:uid          -> login form (id="login", fields login/password) or consent form
//   POST /interaction/:uid/login    -> checks the static account; bad password re-renders with an error
//   POST /interaction/:uid/confirm  -> grants the requested scopes/claims
//   GET  /interaction/:uid/abort    -> ends the login with error=access_denied
import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(process.env.OIDC_OP_CONFIG || '{}');
const accounts = config.accounts || {};

function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head>`
    + `<body><h1>${esc(title)}</h1>${body}</body></html>`;
}

function loginForm(uid, error) {
  return page('Sign-in', `${error ? `<p class="error">${esc(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${esc(uid)}/login">
  <input type="text" name="login" autofocus>
  <input type="password" name="password">
  <button type="submit">Sign-in</button>
</form>
<a href="/interaction/${esc(uid)}/abort">Cancel</a>`);
}

function consentForm(uid, details) {
  return page('Authorize', `<p>Scopes: ${esc((details.missingOIDCScope || []).join(' '))}</p>
<form id="consent" method="post" action="/interaction/${esc(uid)}/confirm">
  <button type="submit">Continue</button>
</form>
<a href="/interaction/${esc(uid)}/abort">Cancel</a>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

function signingKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [
    { ...rsa, kid: `rsa-${crypto.randomUUID()}`, use: 'sig', alg: 'RS256' },
    { ...ec, kid: `ec-${crypto.randomUUID()}`, use: 'sig', alg: 'ES256' },
  ];
}

async function handleInteraction(provider, req, res, url) {
  const match = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/);
  if (!match) return false;
  const [, uid, action] = match;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Error', 'interaction mismatch'));
    return true;
  }
  const { prompt, params, session } = details;

  if (!action && req.method === 'GET') {
    send(res, 200, prompt.name === 'login' ? loginForm(uid) : consentForm(uid, prompt.details));
    return true;
  }
  if (action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return true;
  }
  if (action === 'login' && req.method === 'POST') {
    const form = await readForm(req);
    const login = form.get('login') || '';
    const account = accounts[login];
    const given = Buffer.from(form.get('password') || '');
    const expected = Buffer.from(account ? account.password : '');
    if (!account || given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
      send(res, 200, loginForm(uid, 'Invalid login or password.'));
      return true;
    }
    await provider.interactionFinished(req, res, {
      login: { accountId: login, amr: ['pwd'], acr: 'urn:test:loa:1' },
    }, { mergeWithLastSubmission: false });
    return true;
  }
  if (action === 'confirm' && req.method === 'POST') {
    await readForm(req);
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    if (prompt.details.missingResourceScopes) {
      for (const [indicator, scope] of Object.entries(prompt.details.missingResourceScopes)) {
        grant.addResourceScope(indicator, scope.join(' '));
      }
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return true;
  }
  send(res, 405, page('Error', 'method not allowed'));
  return true;
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: config.clients || [],
    jwks: { keys: signingKeys() },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    claims: {
      acr: null, amr: null, auth_time: null, sid: null, iss: null,
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username', 'updated_at'],
      groups: ['groups'],
    },
    async findAccount(ctx, id) {
      const account = accounts[id];
      if (!account) return undefined;
      return { accountId: id, async claims() { return { sub: id, ...account.claims }; } };
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: { devInteractions: { enabled: false } },
    pkce: { required: () => true },
    clientBasedCORS: () => false,
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<pre id="error">${esc(JSON.stringify(out))}</pre>`);
    },
  });
  const callback = provider.callback();
  server.on('request', async (req, res) => {
    const url = new URL(req.url, issuer);
    try {
      if (url.pathname.startsWith('/interaction/') && await handleInteraction(provider, req, res, url)) return;
    } catch (err) {
      send(res, 400, page('Error', `<pre id="error">${esc(err && err.message)}</pre>`));
      return;
    }
    callback(req, res);
  });
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, port })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => { server.closeAllConnections(); server.close(() => process.exit(0)); });
}
