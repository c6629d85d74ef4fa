"""Federation broker: enterprise SAML 2.0 / OIDC identity providers in, plain OpenID Connect out."""

__version__ = "0.1.0"
