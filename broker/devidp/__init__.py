"""The development IdP: a real SAML 2.0 IdP and a real OpenID Provider for `broker demo` (BROKER_ENV=dev only).

Framework-free: keys.py (persisted signing keys), users.py (the person typed into the login form),
saml.py (AuthnRequest parsing, signed Responses, IdP metadata), oidc.py (discovery, JWKS, codes, tokens,
userinfo), local_fetch.py (serves the dev IdP's own documents to `broker demo` before the server runs).
It trusts only the SPs and RPs of this broker: connections of this broker's ConfigStore, addressed by ACS /
redirect URLs under BROKER_PUBLIC_URL. The web layer is broker/web/dev_idp.py.
"""
