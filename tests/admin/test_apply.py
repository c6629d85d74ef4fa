"""`broker config apply`: YAML files validated by the admin API's own code, applied idempotently in one
transaction; any error names file + path + problem and leaves the database exactly as it was."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.admin.apply import ApplyResult, ConfigFileError, apply_config
from broker.app import build_services
from broker.cli import main
from broker.settings import load_settings
from broker.web.context import Services
from tests.conftest import ROOT, make_env

SECRETS = {
    "ACME_PORTAL_CLIENT_SECRET": "acme-portal-secret-0123456789abcdefghij",
    "ACME_OKTA_OIDC_SECRET": "okta-oidc-client-secret",
    "CONTOSO_HR_CLIENT_SECRET": "contoso-hr-secret-0123456789abcdefghij",
    "GLOBEX_INTRANET_CLIENT_SECRET": "globex-intranet-secret-0123456789abcdef",
    "INITECH_TPS_CLIENT_SECRET": "initech-tps-secret-0123456789abcdefghij",
}
EXAMPLE_TENANTS = ("acme", "contoso", "globex", "initech")


@pytest.fixture
def svc(database_url: str) -> Iterator[Services]:
    services = build_services(load_settings(make_env(database_url)))
    yield services
    services.extras["engine"].dispose()


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A copy of config/examples and metadata/ (same relative layout), free to edit."""
    shutil.copytree(ROOT / "config" / "examples", tmp_path / "config" / "examples")
    shutil.copytree(ROOT / "metadata", tmp_path / "metadata")
    return tmp_path / "config" / "examples"


@pytest.fixture
def env() -> dict[str, str]:
    return dict(SECRETS)


def run(svc: Services, conf: Path, env: dict[str, str], **kw: Any) -> ApplyResult:
    return apply_config(svc.admin, conf, env=env, **kw)


def lines(result: ApplyResult) -> list[str]:
    return [str(c) for c in result.changes]


def snapshot(svc: Services) -> dict[str, Any]:
    """Everything apply could touch, including generated values that must never change on re-apply."""
    store = svc.config
    out: dict[str, Any] = {}
    for t in store.tenants():
        out[t.slug] = {
            "tenant": (t.name, t.version),
            "connections": {c.slug: (c.version, c.sp.signing_cert_pem if c.sp else None,
                                     c.sp.encryption_cert_pem if c.sp else None)
                            for c in store.connections(t.id)},
            "apps": {a.client_id: (a.version, a.client_secret_hash) for a in store.apps(t.id)},
            "keys": sorted((k.kid, k.alg, k.active) for k in store.signing_keys(t.id)),
        }
    return out


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


# -- creating, idempotence, updates -----------------------------------------------------------------------


def test_apply_examples_creates_everything(svc: Services, conf: Path, env: dict[str, str]) -> None:
    result = run(svc, conf, env)
    assert set(lines(result)) == {
        "+ tenant acme", "+ connection acme/okta", "+ connection acme/okta-oidc", "+ app acme/acme-portal",
        "+ tenant contoso", "+ connection contoso/entra", "+ app contoso/contoso-hr", "+ key contoso/ES256",
        "+ tenant globex", "+ connection globex/ping", "+ app globex/globex-intranet",
        "+ tenant initech", "+ connection initech/google", "+ app initech/initech-tps",
    }
    assert lines(result)[:4] == [  # grouped by tenant, files in name order: entra-id.yaml comes first
        "+ tenant contoso", "+ connection contoso/entra", "+ app contoso/contoso-hr", "+ key contoso/ES256"]
    assert result.render().endswith("applied: 14 created, 0 updated, 0 deleted")
    store = svc.config
    assert sorted(t.slug for t in store.tenants()) == sorted(EXAMPLE_TENANTS)
    acme = store.tenant_by_slug("acme")
    assert acme is not None and acme.name == "Acme Corp"
    okta = store.connection(acme.id, "okta")
    assert okta is not None and okta.protocol == "saml" and okta.mapping.preset == "okta"
    assert okta.domains == ("acme.example", "acme-corp.example") and okta.restrict_to_domains
    assert okta.settings["metadata_xml"].startswith("<?xml") and "metadata_file" not in okta.settings
    assert okta.sp is not None
    oidc = store.connection(acme.id, "okta-oidc")
    assert oidc is not None and oidc.settings["client_secret"] == SECRETS["ACME_OKTA_OIDC_SECRET"]
    app = store.app(acme.id, "acme-portal")
    assert app is not None and app.client_secret_hash is not None
    assert svc.admin.hasher.verify(SECRETS["ACME_PORTAL_CLIENT_SECRET"], app.client_secret_hash)
    presets = {slug: [c.mapping.preset for c in store.connections(store.tenant_by_slug(slug).id)]  # type: ignore[union-attr]
               for slug in EXAMPLE_TENANTS}
    assert presets == {"acme": ["okta", "generic-oidc"], "contoso": ["azure-ad"], "globex": ["ping"],
                       "initech": ["google"]}
    contoso = store.tenant_by_slug("contoso")
    assert contoso is not None
    assert {k.alg for k in store.signing_keys(contoso.id) if k.active} == {"RS256", "ES256"}
    events = svc.admin.audit(svc.admin.authenticate("Bearer test-bootstrap-admin-key-0123456789"), "acme",
                             {"type": "admin"})["events"]
    assert {e["details"]["action"] for e in events} >= {"tenant.create", "connection.create", "app.create"}
    assert all(e["details"]["via"] == "config apply" for e in events)


def test_second_apply_changes_nothing(svc: Services, conf: Path, env: dict[str, str]) -> None:
    run(svc, conf, env)
    before = snapshot(svc)
    again = run(svc, conf, env)
    assert again.changes == ()
    assert again.render() == "no changes"
    assert snapshot(svc) == before  # no version bumped, no SP key or signing key regenerated


def test_changed_file_shows_only_that_diff(svc: Services, conf: Path, env: dict[str, str]) -> None:
    run(svc, conf, env)
    before = snapshot(svc)
    edit(conf / "okta.yaml", "domains: [acme.example, acme-corp.example]", "domains: [acme.example]")
    edit(conf / "okta.yaml", "Acme-Admins: admin", "Acme-Admins: admin, Acme-Support: support")
    result = run(svc, conf, env)
    assert lines(result) == ["~ connection acme/okta: domains, mapping.rules"]
    after = snapshot(svc)
    old_v, old_sign, old_enc = before["acme"]["connections"]["okta"]
    new_v, new_sign, new_enc = after["acme"]["connections"]["okta"]
    assert new_v == old_v + 1 and (new_sign, new_enc) == (old_sign, old_enc)  # SP keys kept
    after["acme"]["connections"]["okta"] = before["acme"]["connections"]["okta"]
    assert after == before
    acme = svc.config.tenant_by_slug("acme")
    assert acme is not None
    okta = svc.config.connection(acme.id, "okta")
    assert okta is not None and okta.domains == ("acme.example",)
    assert run(svc, conf, env).changes == ()


def test_tenant_name_settings_and_secrets_are_diffed(svc: Services, conf: Path, env: dict[str, str]) -> None:
    run(svc, conf, env)
    edit(conf / "okta.yaml", "name: Acme Corp", "name: Acme Corporation")
    edit(conf / "ping.yaml", "clock_skew_seconds: 180", "clock_skew_seconds: 60")
    env["ACME_PORTAL_CLIENT_SECRET"] = "a-new-portal-secret-0123456789abcdefghij"
    env["ACME_OKTA_OIDC_SECRET"] = "rotated-okta-secret"
    result = run(svc, conf, env)
    assert lines(result) == [
        "~ tenant acme: name",
        "~ connection acme/okta-oidc: oidc.client_secret",
        "~ app acme/acme-portal: client_secret",
        "~ connection globex/ping: saml.clock_skew_seconds",
    ]
    acme = svc.config.tenant_by_slug("acme")
    assert acme is not None and acme.name == "Acme Corporation"
    app = svc.config.app(acme.id, "acme-portal")
    assert app is not None and app.client_secret_hash is not None
    assert svc.admin.hasher.verify(env["ACME_PORTAL_CLIENT_SECRET"], app.client_secret_hash)
    assert env["ACME_OKTA_OIDC_SECRET"] not in result.render()
    assert env["ACME_PORTAL_CLIENT_SECRET"] not in result.render()
    assert run(svc, conf, env).changes == ()


def test_admin_api_changes_are_reverted_to_the_files(svc: Services, conf: Path, env: dict[str, str]) -> None:
    run(svc, conf, env)
    key = svc.admin.authenticate("Bearer test-bootstrap-admin-key-0123456789")
    svc.admin.patch_connection(key, "initech", "google", {"saml": {"allow_idp_initiated": False},
                                                          "enabled": False})
    svc.admin.patch_app(key, "initech", "initech-tps", {"access_token_ttl": 900})
    result = run(svc, conf, env)
    assert lines(result) == ["~ connection initech/google: enabled, saml.allow_idp_initiated",
                             "~ app initech/initech-tps: access_token_ttl"]
    assert run(svc, conf, env).changes == ()


def test_keys_policy_adds_a_key_once_and_never_rotates(svc: Services, conf: Path, env: dict[str, str]) -> None:
    run(svc, conf, env)
    edit(conf / "google.yaml", "    name: Initech\n", "    name: Initech\n    keys: {signing_alg: ES256}\n")
    assert lines(run(svc, conf, env)) == ["+ key initech/ES256"]
    before = snapshot(svc)
    assert run(svc, conf, env).changes == ()
    assert snapshot(svc) == before


# -- prune and dry run ------------------------------------------------------------------------------------


def test_prune_deletes_only_what_named_tenants_no_longer_list(
    svc: Services, conf: Path, env: dict[str, str]
) -> None:
    run(svc, conf, env)
    key = svc.admin.authenticate("Bearer test-bootstrap-admin-key-0123456789")
    acme = svc.config.tenant_by_slug("acme")
    assert acme is not None
    svc.admin.create_app(key, acme, {"name": "Old", "redirect_uris": ["https://old.example/cb"],
                                     "client_id": "acme-old"})
    svc.admin.create_tenant(key, {"slug": "unmanaged", "name": "Made by hand"})
    text = (conf / "okta.yaml").read_text()
    start, end = text.index("      - slug: okta-oidc\n"), text.index("    apps:\n")
    (conf / "okta.yaml").write_text(text[:start] + text[end:])  # the OIDC connection is gone from the file

    without = run(svc, conf, env)
    assert without.changes == ()  # not named, but kept without --prune
    assert svc.config.connection(acme.id, "okta-oidc") is not None

    preview = run(svc, conf, env, prune=True, dry_run=True)
    assert lines(preview) == ["- connection acme/okta-oidc", "- app acme/acme-old"]
    assert svc.config.app(acme.id, "acme-old") is not None

    result = run(svc, conf, env, prune=True)
    assert lines(result) == ["- connection acme/okta-oidc", "- app acme/acme-old"]
    assert result.render().endswith("applied: 0 created, 0 updated, 2 deleted")
    assert svc.config.connection(acme.id, "okta-oidc") is None
    assert svc.config.app(acme.id, "acme-old") is None
    assert svc.config.tenant_by_slug("unmanaged") is not None  # tenants the files do not name: untouched
    assert run(svc, conf, env, prune=True).changes == ()


def test_two_tenants_may_name_the_same_client_id(svc: Services, conf: Path, env: dict[str, str]) -> None:
    """client_ids are unique per tenant: initech may call its app acme-portal too, with its own secret."""
    run(svc, conf, env)
    edit(conf / "google.yaml", "client_id: initech-tps", "client_id: acme-portal")
    edit(conf / "google.yaml", "INITECH_TPS_CLIENT_SECRET", "ACME_PORTAL_CLIENT_SECRET")
    result = run(svc, conf, env)
    assert set(lines(result)) == {"+ app initech/acme-portal"}
    acme, initech = svc.config.tenant_by_slug("acme"), svc.config.tenant_by_slug("initech")
    assert acme is not None and initech is not None
    mine, theirs = svc.config.app(acme.id, "acme-portal"), svc.config.app(initech.id, "acme-portal")
    assert mine is not None and theirs is not None and mine.id != theirs.id
    assert run(svc, conf, env).changes == ()
    assert set(lines(run(svc, conf, env, prune=True))) == {"- app initech/initech-tps"}


def test_dry_run_writes_nothing(svc: Services, conf: Path, env: dict[str, str]) -> None:
    preview = run(svc, conf, env, dry_run=True)
    assert len(preview.changes) == 14
    assert preview.render().endswith("dry run: 14 to create, 0 to update, 0 to delete; nothing written")
    assert svc.config.tenants() == []
    run(svc, conf, env)
    before = snapshot(svc)
    edit(conf / "entra-id.yaml", "default: employee", "default: staff")
    assert lines(run(svc, conf, env, dry_run=True)) == ["~ connection contoso/entra: mapping.rules"]
    assert snapshot(svc) == before


# -- errors: nothing applied, file + path + problem ---------------------------------------------------------

BROKEN: dict[str, tuple[str, str]] = {
    "bad_yaml": (
        "tenants:\n  - slug: zed\n    name: [unclosed\n",
        "zz-broken.yaml: line 4, column 1: invalid YAML",
    ),
    "duplicate_key": (
        "tenants:\n  - slug: zed\n    name: Zed\n    name: Zed again\n",
        "zz-broken.yaml: line 4, column 5: invalid YAML: duplicate key 'name'",
    ),
    "alias_bomb": (  # 9**7 values once expanded: refused before anything walks them
        "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "x"] * 9) + "]\n" for i in range(8)),
        "zz-broken.yaml: invalid YAML: more than 1,000,000 values once its aliases are expanded",
    ),
    "not_a_mapping": ("- a\n- b\n", "zz-broken.yaml: must be a mapping with a `tenants` list"),
    "unknown_top_field": ("tenant: []\n", "zz-broken.yaml: tenant: unknown field"),
    "unknown_tenant_field": (
        "tenants: [{slug: zed, name: Zed, colour: red}]\n", "zz-broken.yaml: tenants[0].colour: unknown field",
    ),
    "bad_tenant_slug": ("tenants: [{slug: Zed!, name: Zed}]\n", "zz-broken.yaml: tenants[0].slug: Value error"),
    "unknown_connection_field": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml, sso: true}]}]\n",
        "zz-broken.yaml: tenants[0].connections[0].sso: unknown field",
    ),
    "unknown_saml_setting": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml, saml: {colour: red}}]}]\n",
        "zz-broken.yaml: tenants[0].connections[0].saml.colour: Unknown saml setting 'colour'",
    ),
    "bad_metadata": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml,"
        " saml: {metadata_file: ../../metadata/bad.xml}}]}]\n",
        "zz-broken.yaml: tenants[0].connections[0].saml.metadata_file: The IdP metadata was not accepted",
    ),
    "missing_metadata_file": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml,"
        " saml: {metadata_file: ../../metadata/nope.xml}}]}]\n",
        "zz-broken.yaml: tenants[0].connections[0].saml.metadata_file: cannot read ../../metadata/nope.xml",
    ),
    "bad_rule": (
        "tenants:\n- slug: zed\n  name: Zed\n  connections:\n  - slug: c\n    protocol: saml\n"
        "    mapping: {preset: okta, rules: [{op: require, claim: email}, {op: explode}]}\n",
        "zz-broken.yaml: tenants[0].connections[0].mapping.rules[1]: Mapping rule 1:",
    ),
    "unknown_preset": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml, mapping: {preset: octa}}]}]\n",
        "zz-broken.yaml: tenants[0].connections[0].mapping.preset: Unknown mapping preset 'octa'",
    ),
    "bad_domain": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml, domains: [nodot]}]}]\n",
        "zz-broken.yaml: tenants[0].connections[0].domains: Value error, 'nodot' is not a domain name",
    ),
    "missing_env_secret_app": (
        "tenants: [{slug: zed, name: Zed, apps: [{client_id: zed-app, name: Z,"
        " redirect_uris: ['https://z.example/cb'], client_secret_env: ZED_UNSET_SECRET}]}]\n",
        "zz-broken.yaml: tenants[0].apps[0].client_secret_env: environment variable ZED_UNSET_SECRET is not set",
    ),
    "missing_env_secret_oidc": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: oidc, oidc: {issuer:"
        " 'https://idp.zed.example', client_id: zed, client_secret_env: ZED_UNSET_SECRET}}]}]\n",
        "zz-broken.yaml: tenants[0].connections[0].oidc.client_secret_env: environment variable ZED_UNSET_SECRET",
    ),
    "short_env_secret": (
        "tenants: [{slug: zed, name: Zed, apps: [{client_id: zed-app, name: Z,"
        " redirect_uris: ['https://z.example/cb'], client_secret_env: SHORT_SECRET}]}]\n",
        "zz-broken.yaml: tenants[0].apps[0].client_secret_env: String should have at least 32 characters",
    ),
    "app_without_client_id": (
        "tenants: [{slug: zed, name: Zed, apps: [{name: Z, redirect_uris: ['https://z.example/cb']}]}]\n",
        "zz-broken.yaml: tenants[0].apps[0].client_id: is required",
    ),
    "confidential_app_without_secret": (
        "tenants: [{slug: zed, name: Zed, apps: [{client_id: zed-app, name: Z,"
        " redirect_uris: ['https://z.example/cb']}]}]\n",
        "zz-broken.yaml: tenants[0].apps[0].client_secret_env: a confidential app needs a secret",
    ),
    "public_app_with_secret": (
        "tenants: [{slug: zed, name: Zed, apps: [{client_id: zed-app, name: Z, public: true,"
        " redirect_uris: ['https://z.example/cb'], client_secret_env: ACME_PORTAL_CLIENT_SECRET}]}]\n",
        "zz-broken.yaml: tenants[0].apps[0].client_secret_env: A public app has no client secret.",
    ),
    "duplicate_tenant_slug": (
        "tenants: [{slug: acme, name: Acme again}]\n",
        "zz-broken.yaml: tenants[0].slug: tenant 'acme' is already defined at ",
    ),
    "duplicate_connection_slug": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml}, {slug: c, protocol: saml}]}]\n",
        "zz-broken.yaml: tenants[0].connections[1].slug: connection 'c' is already defined at "
        "tenants[0].connections[0]",
    ),
    "duplicate_client_id": (
        "tenants: [{slug: zed, name: Zed, apps: [{client_id: z-portal, name: Z, public: true,"
        " redirect_uris: ['https://z.example/cb']}, {client_id: z-portal, name: Z2, public: true,"
        " redirect_uris: ['https://z.example/cb2']}]}]\n",
        "zz-broken.yaml: tenants[0].apps[1].client_id: client_id 'z-portal' is already defined at ",
    ),
    "duplicate_domain": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: a, protocol: saml, domains: [zed.example]},"
        " {slug: b, protocol: saml, domains: [zed.example]}]}]\n",
        "zz-broken.yaml: tenants[0].connections[1].domains: domain zed.example is already used by connection 'a'",
    ),
    "two_metadata_sources": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml, saml: {metadata_file: x.xml,"
        " metadata_url: 'https://idp.example/md'}}]}]\n",
        "zz-broken.yaml: tenants[0].connections[0].saml: give one of metadata_file, metadata_xml or metadata_url",
    ),
    "bad_keys_policy": (
        "tenants: [{slug: zed, name: Zed, keys: {signing_alg: HS256}}]\n",
        "zz-broken.yaml: tenants[0].keys.signing_alg: Input should be 'RS256' or 'ES256'",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_file_applies_nothing(
    svc: Services, conf: Path, env: dict[str, str], case: str
) -> None:
    text, expected = BROKEN[case]
    (conf.parent.parent / "metadata" / "bad.xml").write_text("<md:EntityDescriptor xmlns:md='nope'/>")
    env["SHORT_SECRET"] = "too-short"
    (conf / "zz-broken.yaml").write_text(text)  # sorted after the valid example files
    with pytest.raises(ConfigFileError) as err:
        run(svc, conf, env)
    assert str(conf / "zz-broken.yaml") in err.value.message
    assert expected in err.value.message.replace(str(conf) + "/", ""), err.value.message
    assert svc.config.tenants() == []  # not even the earlier, valid tenants


def test_a_broken_file_changes_nothing_on_an_existing_setup(
    svc: Services, conf: Path, env: dict[str, str]
) -> None:
    run(svc, conf, env)
    before = snapshot(svc)
    edit(conf / "entra-id.yaml", "default: employee", "default: staff")  # a valid change, earlier file
    edit(conf / "google.yaml", "preset: google", "preset: gogle")
    with pytest.raises(ConfigFileError) as err:
        run(svc, conf, env, prune=True)
    assert err.value.message.startswith(f"{conf / 'google.yaml'}: tenants[0].connections[0].mapping.preset: ")
    assert snapshot(svc) == before


def test_domain_of_an_unnamed_connection_is_a_conflict_without_prune(
    svc: Services, conf: Path, env: dict[str, str]
) -> None:
    run(svc, conf, env)
    key = svc.admin.authenticate("Bearer test-bootstrap-admin-key-0123456789")
    globex = svc.config.tenant_by_slug("globex")
    assert globex is not None
    svc.admin.delete_connection(key, "globex", "ping")
    svc.admin.create_connection(key, globex, {"slug": "legacy", "protocol": "saml", "domains": ["globex.example"]})
    with pytest.raises(ConfigFileError) as err:
        run(svc, conf, env)
    assert "ping.yaml: tenants[0].connections[0].domains: domain globex.example is already used by connection " \
           "'legacy'" in err.value.message
    assert lines(run(svc, conf, env, prune=True)) == ["- connection globex/legacy", "+ connection globex/ping"]


def test_protocol_change_is_refused(svc: Services, conf: Path, env: dict[str, str]) -> None:
    run(svc, conf, env)
    key = svc.admin.authenticate("Bearer test-bootstrap-admin-key-0123456789")
    svc.admin.delete_connection(key, "acme", "okta-oidc")
    acme = svc.config.tenant_by_slug("acme")
    assert acme is not None
    svc.admin.create_connection(key, acme, {"slug": "okta-oidc", "protocol": "saml"})
    with pytest.raises(ConfigFileError) as err:
        run(svc, conf, env)
    assert "okta.yaml: tenants[0].connections[1].protocol: A connection's protocol cannot be changed" \
        in err.value.message


def test_missing_or_empty_directory(svc: Services, tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigFileError, match="no such directory"):
        run(svc, tmp_path / "nope", env)
    with pytest.raises(ConfigFileError, match=r"no \*\.yaml or \*\.yml files"):
        run(svc, tmp_path, env)


# -- the command line ---------------------------------------------------------------------------------------


def test_cli_end_to_end(
    database_url: str, conf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in {**make_env(database_url), **SECRETS}.items():
        monkeypatch.setenv(k, v)

    assert main(["config", "apply", str(conf), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "+ tenant acme\n" in out and "nothing written" in out

    assert main(["config", "apply", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "+ connection acme/okta\n" in out and out.strip().endswith("applied: 14 created, 0 updated, 0 deleted")

    assert main(["config", "apply", str(conf)]) == 0
    assert capsys.readouterr().out.strip() == "no changes"

    edit(conf / "ping.yaml", "clock_skew_seconds: 180", "clock_skew_seconds: 60")
    (conf / "okta.yaml").unlink()
    (conf / "acme.yml").write_text("tenants: [{slug: acme, name: Acme Corp}]\n")
    assert main(["config", "apply", str(conf), "--prune"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "- connection acme/okta", "- connection acme/okta-oidc", "- app acme/acme-portal",
        "~ connection globex/ping: saml.clock_skew_seconds", "applied: 0 created, 1 updated, 3 deleted",
    ]

    monkeypatch.delenv("GLOBEX_INTRANET_CLIENT_SECRET")
    assert main(["config", "apply", str(conf)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"broker: {conf / 'ping.yaml'}: tenants[0].apps[0].client_secret_env: "
                            "environment variable GLOBEX_INTRANET_CLIENT_SECRET is not set\n")


def test_an_idp_initiated_connection_must_name_an_app_and_redirect_uri_that_work(
    svc: Services, conf: Path, env: dict[str, str]
) -> None:
    google = conf / "google.yaml"
    edit(google, "          name_id_format: urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress\n",
         "          name_id_format: urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress\n"
         "          allow_idp_initiated: true\n"
         "          idp_initiated_app: initech-tps\n"
         "          idp_initiated_redirect_uri: https://tps.initech.example/elsewhere\n")
    with pytest.raises(ConfigFileError) as err:
        run(svc, conf, env)
    assert "google.yaml: tenants[0].connections[0].saml.idp_initiated_redirect_uri: " in err.value.message
    assert svc.config.tenants() == [], "nothing applied"
    edit(google, "idp_initiated_app: initech-tps", "idp_initiated_app: acme-portal")  # another tenant's app
    with pytest.raises(ConfigFileError) as err:
        run(svc, conf, env)
    assert "saml.idp_initiated_app: saml.idp_initiated_app 'acme-portal' is not an app of this tenant" \
        in err.value.message
    edit(google, "idp_initiated_app: acme-portal", "idp_initiated_app: initech-tps")
    edit(google, "https://tps.initech.example/elsewhere", "https://tps.initech.example/callback")
    run(svc, conf, env)  # the app the same file creates, at one of its redirect URIs
    initech = svc.config.tenant_by_slug("initech")
    assert initech is not None
    conn = svc.config.connection(initech.id, "google")
    assert conn is not None and conn.settings["idp_initiated_app"] == "initech-tps"
