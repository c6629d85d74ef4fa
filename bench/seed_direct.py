"""Seed N tenants straight into the database, for measuring per-login cost against a large tenant count.

Run by hand, with the broker's environment (DATABASE_URL, BROKER_SECRET_KEY):

    python bench/seed_direct.py 10000 [--idp-key FILE]

With `--idp-key FILE` (the file login_bench.py's `--idp-key` keeps, created here if missing) the seeded
connections trust that test IdP from the start, so `login_bench.py --tenants N --spread --assume-seeded
--idp-key FILE` can log in at once, without uploading metadata to every tenant first.

Each tenant `seed-NNNNN` gets a signing key, a SAML connection `idp` (with SP key pairs and IdP metadata)
and an app, exactly as the admin API would store them, but with key material generated once and reused
(generating ~30,000 RSA keys would take longer than the measurement). Idempotent: existing tenants are
skipped. Writes go through the broker's own ConfigStore, 500 tenants per transaction.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from login_bench import SEED_SECRET, idp_metadata_xml, load_idp  # noqa: E402

from broker.app import build_services  # noqa: E402
from broker.issuer.keys import generate_signing_key  # noqa: E402
from broker.model import MappingConfig  # noqa: E402
from broker.ports import AppDraft, ConnectionDraft, NewSigningKey  # noqa: E402
from broker.settings import load_settings  # noqa: E402
from broker.upstream.saml_keys import generate_sp_credentials  # noqa: E402
from tests.samlxml.idp_fixtures import make_idp  # noqa: E402
from tests.support.saml_idp import SamlIdp  # noqa: E402

BATCH = 500


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("count", type=int, nargs="?", default=10000)
    p.add_argument("--idp-key", type=Path, default=None, help="trust login_bench.py's test IdP kept in this file")
    args = p.parse_args()
    count = args.count
    svc = build_services(load_settings())
    store = svc.config
    gen = generate_signing_key("RS256")
    key = NewSigningKey(gen.kid, gen.alg, gen.private_pem, gen.public_jwk)
    sp = generate_sp_credentials("bench-seed")
    if args.idp_key is not None:
        metadata = idp_metadata_xml(load_idp(args.idp_key))
    else:
        metadata = SamlIdp(idp=make_idp("https://seed-idp.bench.example/metadata"),
                           url="https://seed-idp").metadata_xml()
    secret_hash = svc.admin.hasher.digest(SEED_SECRET)  # the secret login_bench.py authenticates with
    existing = {t.slug for t in store.tenants()}
    started = time.perf_counter()
    made = 0
    for start in range(0, count, BATCH):
        with store.atomic():
            for i in range(start, min(count, start + BATCH)):
                slug = f"seed-{i:05d}"
                if slug in existing:
                    continue
                tenant = store.create_tenant(slug, f"Seed {slug}", key)
                store.create_connection(tenant.id, ConnectionDraft(
                    slug="idp", protocol="saml", domains=(f"{slug}.bench.example",), restrict_to_domains=False,
                    mapping=MappingConfig(preset="okta"), settings={"metadata_xml": metadata}, secrets={},
                    enabled=True, sp=sp))
                store.create_app(tenant.id, f"bench-{slug}", AppDraft(
                    name=f"bench app {slug}", redirect_uris=("https://app.bench.example/callback",),
                    post_logout_redirect_uris=(), public=False,
                    allowed_scopes=("openid", "profile", "email", "groups", "offline_access"),
                    token_endpoint_auth_method="client_secret_basic", id_token_signed_response_alg="RS256",
                    access_token_ttl=600, id_token_ttl=600, refresh_token_ttl=86400), secret_hash)
                made += 1
        print(f"seeded {min(count, start + BATCH)}/{count} ({made} new, "
              f"{made / (time.perf_counter() - started):.0f}/s)", file=sys.stderr, flush=True)
    svc.extras["engine"].dispose()


if __name__ == "__main__":
    main()
