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
def env(tmp_path: Path) -> dict[str, str]:
    """The secrets, and BROKER_CONFIG_ROOT: the examples' metadata lives beside config/, not inside it."""
    return {**SECRETS, "BROKER_CONFIG_ROOT": str(tmp_path)}


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
    for k, v in {**make_env(database_url), **SECRETS, "BROKER_CONFIG_ROOT": str(conf.parent.parent)}.items():
        monkeypatch.setenv(k, v)

    assert main(["config", "apply", str(conf), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "+ tenant acme\n" in out and "nothing written" in out
    assert main(["config", "apply", str(conf), "--dry-run", "--exit-code"]) == 1  # the database has drifted
    capsys.readouterr()

    assert main(["config", "apply", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "+ connection acme/okta\n" in out and out.strip().endswith("applied: 14 created, 0 updated, 0 deleted")

    assert main(["config", "apply", str(conf)]) == 0
    assert capsys.readouterr().out.strip() == "no changes"
    assert main(["config", "apply", str(conf), "--dry-run", "--exit-code"]) == 0
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
    assert "saml.idp_initiated_app: 'acme-portal' is not an app of this tenant" in err.value.message
    edit(google, "idp_initiated_app: acme-portal", "idp_initiated_app: initech-tps")
    edit(google, "https://tps.initech.example/elsewhere", "https://tps.initech.example/callback")
    run(svc, conf, env)  # the app the same file creates, at one of its redirect URIs
    initech = svc.config.tenant_by_slug("initech")
    assert initech is not None
    conn = svc.config.connection(initech.id, "google")
    assert conn is not None and conn.settings["idp_initiated_app"] == "initech-tps"


# -- the environment: the broker's secrets are never readable, BROKER_CONFIG_ENV_ALLOW, no value in errors ----


def one_file(tmp_path: Path, text: str, name: str = "zed.yaml") -> Path:
    """A config directory holding one file."""
    d = tmp_path / "solo"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d


OIDC_ZED = ("tenants: [{{slug: zed, name: Zed, connections: [{{slug: c, protocol: oidc, oidc: {{issuer:"
            " 'https://idp.zed.example', client_id: zed, {secret}}}}}]}}]\n")
APP_ZED = ("tenants: [{{slug: zed, name: Zed, apps: [{{client_id: zed-app, name: Z,"
           " redirect_uris: ['https://z.example/cb'], {secret}}}]}}]\n")
SECRET_VALUE = "the-real-secret-key-0123456789abcdefghijklmnop"
DENIED = ("BROKER_SECRET_KEY", "BROKER_SECRET_KEY_PREVIOUS", "BROKER_BOOTSTRAP_ADMIN_KEY", "BROKER_METRICS_TOKEN",
          "DATABASE_URL", "REDIS_URL")


@pytest.mark.parametrize("name", DENIED)
@pytest.mark.parametrize("how", ["tenant_name", "metadata_url", "oidc_secret_env", "app_secret_env"])
def test_the_brokers_own_secrets_cannot_be_read_from_a_config_file(
    svc: Services, tmp_path: Path, env: dict[str, str], name: str, how: str
) -> None:
    text = {
        "tenant_name": f"tenants: [{{slug: zed, name: 'Zed ${{{name}}}'}}]\n",
        "metadata_url": ("tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml,"
                         f" saml: {{metadata_url: 'https://evil.example/${{{name}}}'}}}}]}}]\n"),
        "oidc_secret_env": OIDC_ZED.format(secret=f"client_secret_env: {name}"),
        "app_secret_env": APP_ZED.format(secret=f"client_secret_env: {name}"),
    }[how]
    fetched: list[str] = []
    svc.admin.fetch_metadata = lambda url: fetched.append(url) or b""  # type: ignore[func-returns-value]
    env[name] = SECRET_VALUE
    with pytest.raises(ConfigFileError) as err:
        run(svc, one_file(tmp_path, text), env, dry_run=True)
    assert f"environment variable {name} holds a secret of the broker itself" in err.value.message
    assert "zed.yaml: tenants[0]." in err.value.message
    assert SECRET_VALUE not in err.value.message and SECRET_VALUE not in str(err.value.details)
    assert fetched == [], "nothing was fetched with the secret in its URL"
    assert svc.config.tenants() == []


def test_config_env_allow_limits_the_names_files_may_read(
    svc: Services, conf: Path, env: dict[str, str]
) -> None:
    env["BROKER_CONFIG_ENV_ALLOW"] = "ACME_*, GLOBEX_INTRANET_CLIENT_SECRET"
    with pytest.raises(ConfigFileError) as err:
        run(svc, conf, env)
    assert err.value.message == (  # entra-id.yaml comes first, and names CONTOSO_HR_CLIENT_SECRET
        f"{conf / 'entra-id.yaml'}: tenants[0].apps[0].client_secret_env: environment variable "
        "CONTOSO_HR_CLIENT_SECRET is not allowed by BROKER_CONFIG_ENV_ALLOW "
        "(ACME_*, GLOBEX_INTRANET_CLIENT_SECRET)")
    for f in ("entra-id.yaml", "google.yaml"):
        (conf / f).unlink()
    assert {c.name for c in run(svc, conf, env).changes} >= {"acme/acme-portal", "globex/globex-intranet"}
    env["BROKER_CONFIG_ENV_ALLOW"] = "BROKER_*"  # an allow-list cannot open the denied names
    env["BROKER_SECRET_KEY"] = SECRET_VALUE
    path = one_file(conf.parent, "tenants: [{slug: zed, name: '${BROKER_SECRET_KEY}'}]\n")
    with pytest.raises(ConfigFileError, match="BROKER_SECRET_KEY holds a secret of the broker itself"):
        run(svc, path, env)


@pytest.mark.parametrize("case", ["redirect_uri", "domain", "tenant_name", "short_secret", "duplicate_client_id"])
def test_errors_never_show_a_value_read_from_the_environment(
    svc: Services, tmp_path: Path, env: dict[str, str], case: str
) -> None:
    leak = "Sup3r Secret Value/with#frag"
    env["LEAK"] = leak
    text, where, expected = {
        "redirect_uri": (
            "tenants: [{slug: zed, name: Zed, apps: [{client_id: zed-app, name: Z, public: true,"
            " redirect_uris: ['https://ok.example/cb', 'https://zed.example/${LEAK}']}]}]\n",
            "tenants[0].apps[0].redirect_uris", "invalid value (from ${LEAK}; the problem is not shown"),
        "domain": (
            "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml, domains: ['${LEAK}']}]}]\n",
            "tenants[0].connections[0].domains", "invalid value (from ${LEAK}"),
        "tenant_name": (
            "tenants: [{slug: zed, name: \"${LEAK}\\u202e\"}]\n",
            "tenants[0].name", "Value error, must not contain control or text-direction override characters"
                               " (from ${LEAK})"),
        "short_secret": (
            APP_ZED.format(secret="client_secret_env: LEAK"), "tenants[0].apps[0].client_secret_env",
            "String should have at least 32 characters (from environment variable LEAK)"),
        "duplicate_client_id": (
            "tenants: [{slug: zed, name: Zed, apps: [{client_id: 'z${CID}', name: Z, public: true,"
            " redirect_uris: ['https://z.example/cb']}, {client_id: 'z${CID}', name: Z2, public: true,"
            " redirect_uris: ['https://z.example/cb2']}]}]\n",
            "tenants[0].apps[1].client_id",
            "client_id 'z${CID}' is already defined at"),
    }[case]
    env["CID"] = "-secret-client-id"
    with pytest.raises(ConfigFileError) as err:
        run(svc, one_file(tmp_path, text), env)
    assert err.value.path == where
    assert expected in err.value.problem, err.value.problem
    for shown in (err.value.message, str(err.value.details)):
        assert leak not in shown and "Sup3r" not in shown.replace("${LEAK}", "") and "sup3r" not in shown.lower()
        assert "-secret-client-id" not in shown


def test_an_unset_allow_list_keeps_other_variables_and_the_demo_applies(
    svc: Services, tmp_path: Path
) -> None:
    """`broker demo` applies config/demo.yaml with ${BROKER_PUBLIC_URL} and BROKER_DEMO_OIDC_CLIENT_SECRET."""
    demo = tmp_path / "demo.yaml"
    shutil.copy(ROOT / "config" / "demo.yaml", demo)
    svc.admin.fetch_metadata = lambda url: (ROOT / "metadata" / "okta-acme.xml").read_bytes()
    env = {"BROKER_PUBLIC_URL": "http://127.0.0.1:9", "BROKER_DEMO_OIDC_CLIENT_SECRET": "x" * 40,
           "BROKER_SECRET_KEY": SECRET_VALUE}
    result = apply_config(svc.admin, demo, env=env, dry_run=True)
    assert "+ connection demo/dev-oidc" in lines(result)


# -- metadata_file: inside the config directory, a regular file, at most the metadata size limit -------------


SAML_ZED = ("tenants: [{{slug: zed, name: Zed, connections: [{{slug: c, protocol: saml,"
            " saml: {{metadata_file: '{ref}'}}}}]}}]\n")


def test_metadata_file_must_stay_inside_the_directory_holding_the_config(svc: Services, tmp_path: Path) -> None:
    """SPEC's layout: `config/` and `metadata/` side by side in one repository. A reference may reach the
    sibling `metadata/`, not anything beyond the repository."""
    repo = tmp_path / "repo"
    (repo / "metadata").mkdir(parents=True)
    outside = tmp_path / "outside.xml"
    shutil.copy(ROOT / "metadata" / "okta-acme.xml", outside)
    shutil.copy(outside, repo / "metadata" / "sibling.xml")
    d = one_file(repo, "")
    (d / "link.xml").symlink_to(outside)
    for ref in ("../../outside.xml", str(outside), "link.xml", "../../../../../../../../etc/passwd", "/etc/passwd"):
        (d / "zed.yaml").write_text(SAML_ZED.format(ref=ref))
        with pytest.raises(ConfigFileError) as err:
            run(svc, d, {})
        assert err.value.path == "tenants[0].connections[0].saml.metadata_file"
        assert f"{ref} is outside {repo.resolve()}" in err.value.problem, err.value.problem
        assert "root:" not in err.value.message
    (d / "zed.yaml").write_text(SAML_ZED.format(ref="../metadata/sibling.xml"))
    assert lines(run(svc, d, {})) == ["+ tenant zed", "+ connection zed/c"]
    (d / "zed.yaml").write_text(SAML_ZED.format(ref="../../outside.xml"))  # BROKER_CONFIG_ROOT widens it
    assert lines(run(svc, d, {"BROKER_CONFIG_ROOT": str(tmp_path)})) == []  # the same document: no change


def test_the_confinement_root_follows_the_working_directory(tmp_path: Path) -> None:
    from broker.admin.apply import config_root

    repo = tmp_path / "repo"
    (repo / "config" / "examples").mkdir(parents=True)
    # run in the repository: its metadata/ is reachable from config/examples/ too
    assert config_root(repo / "config" / "examples", {}, cwd=repo) == repo.resolve()
    # run elsewhere: the directory holding DIR
    assert config_root(repo / "config", {}, cwd=tmp_path / "elsewhere") == repo.resolve()
    # never the filesystem root, even when run from there
    assert config_root(repo / "config", {}, cwd=Path("/")) == repo.resolve()
    assert config_root("/config-at-the-top", {}, cwd=Path("/")) == Path("/config-at-the-top")
    assert config_root(repo / "config", {"BROKER_CONFIG_ROOT": str(tmp_path)}, cwd=repo) == tmp_path.resolve()


def test_metadata_file_must_be_a_regular_file_of_bounded_size(svc: Services, tmp_path: Path) -> None:
    import os
    import signal

    d = one_file(tmp_path, "")
    os.mkfifo(d / "fifo.xml")
    (d / "big.xml").write_text((ROOT / "metadata" / "okta-acme.xml").read_text() + " " * 5000)
    svc.admin.max_metadata_bytes = 4000
    cases = {"fifo.xml": (d, "cannot read fifo.xml: not a regular file"),
             "/dev/zero": (Path("/"), "cannot read /dev/zero: not a regular file"),
             "big.xml": (d, "big.xml is larger than 4000 bytes")}
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading the metadata file hung"))
    try:
        for ref, (root, expected) in cases.items():
            (d / "zed.yaml").write_text(SAML_ZED.format(ref=ref))
            signal.alarm(10)
            with pytest.raises(ConfigFileError) as err:
                run(svc, d, {"BROKER_CONFIG_ROOT": str(root)})
            signal.alarm(0)
            assert err.value.problem == expected
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


# -- apply and the admin API at the same time: the tenant lock, and nothing planned on may change ------------


def between_plan_and_write(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Run `action` in another thread (its own transaction) after apply has planned, before it writes."""
    import threading

    from broker.admin import apply as apply_module

    plan = apply_module._Planner.plan  # noqa: SLF001

    def plan_then_interleave(self: Any, tenants: Any) -> Any:
        ops = plan(self, tenants)
        failure: list[BaseException] = []

        def target() -> None:
            try:
                action()
            except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
                failure.append(exc)
        t = threading.Thread(target=target)
        t.start()
        t.join(30)
        assert not t.is_alive() and not failure, failure
        return ops

    monkeypatch.setattr(apply_module._Planner, "plan", plan_then_interleave)  # noqa: SLF001


def test_an_api_patch_between_plan_and_write_is_not_overwritten(
    svc: Services, conf: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(svc, conf, env)
    key = svc.admin.authenticate("Bearer test-bootstrap-admin-key-0123456789")
    edit(conf / "okta.yaml", "default: member", "default: staff")
    between_plan_and_write(monkeypatch, lambda: svc.admin.patch_connection(key, "acme", "okta", {"enabled": False}))
    with pytest.raises(ConfigFileError) as err:
        run(svc, conf, env)
    assert err.value.message == (f"{conf / 'okta.yaml'}: tenants[0]: connection acme/okta was changed by someone "
                                 "else since this apply read it; nothing was written: run config apply again")
    acme = svc.config.tenant_by_slug("acme")
    assert acme is not None
    okta = svc.config.connection(acme.id, "okta")
    assert okta is not None and okta.enabled is False, "the API's change stands"
    assert okta.mapping.rules[1]["default"] == "member", "and the file's was not written"
    monkeypatch.undo()
    assert lines(run(svc, conf, env)) == ["~ connection acme/okta: enabled, mapping.rules"]  # re-run: applies


def test_a_domain_taken_through_the_api_between_plan_and_write_is_not_claimed_twice(
    svc: Services, conf: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(svc, conf, env)
    key = svc.admin.authenticate("Bearer test-bootstrap-admin-key-0123456789")
    acme = svc.config.tenant_by_slug("acme")
    assert acme is not None
    edit(conf / "okta.yaml", "      - slug: okta-oidc\n", "      - slug: okta-oidc\n        domains: [new.example]\n")
    between_plan_and_write(monkeypatch, lambda: svc.admin.create_connection(
        key, acme, {"slug": "rogue", "protocol": "saml", "domains": ["new.example"]}))
    with pytest.raises(ConfigFileError) as err:
        run(svc, conf, env)
    assert "connection acme/rogue was created by someone else since this apply read it" in err.value.message
    owners = [c.slug for c in svc.config.connections(acme.id) if "new.example" in c.domains]
    assert owners == ["rogue"]


def test_a_tenant_renamed_or_created_between_plan_and_write_refuses_the_apply(
    svc: Services, conf: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(svc, conf, env)
    key = svc.admin.authenticate("Bearer test-bootstrap-admin-key-0123456789")
    edit(conf / "okta.yaml", "name: Acme Corp", "name: Acme Corporation")
    between_plan_and_write(monkeypatch, lambda: svc.admin.patch_tenant(key, "acme", {"name": "Acme API"}))
    with pytest.raises(ConfigFileError, match="tenant acme was changed by someone else since this apply read it"):
        run(svc, conf, env)
    acme = svc.config.tenant_by_slug("acme")
    assert acme is not None and acme.name == "Acme API"
    monkeypatch.undo()
    (conf / "zed.yaml").write_text("tenants: [{slug: zed, name: Zed}]\n")
    between_plan_and_write(monkeypatch, lambda: svc.admin.create_tenant(key, {"slug": "zed", "name": "Zed API"}))
    with pytest.raises(ConfigFileError) as err:
        run(svc, conf, env)
    assert err.value.message == (f"{conf / 'zed.yaml'}: tenants[0].slug: tenant zed was created by someone else "
                                 "since this apply read it; nothing was written: run config apply again")
    assert svc.config.tenant_by_slug("acme").name == "Acme API"  # type: ignore[union-attr]


# -- warnings: what the admin API would warn of, printed with the plan ----------------------------------------


def test_the_admin_apis_warnings_are_printed_with_the_plan(
    svc: Services, tmp_path: Path, env: dict[str, str]
) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.samlxml.test_metadata import doc, entity, key_descriptor, make_cert

    now = datetime.now(UTC)
    expired = make_cert("old-idp", not_before=now - timedelta(days=400), not_after=now - timedelta(days=1))
    d = one_file(tmp_path, SAML_ZED.format(ref="idp.xml"))
    (d / "idp.xml").write_bytes(doc(entity(keys=key_descriptor(expired) + key_descriptor(make_cert("new-idp")))))
    preview = run(svc, d, env, dry_run=True)
    warning = "  ! connection zed/c: certificate_expired: CN=old-idp expired "
    assert [line for line in preview.render().splitlines() if line.startswith("  !")][0].startswith(warning)
    out = run(svc, d, env).render().splitlines()
    assert out[:2] == ["+ tenant zed", "+ connection zed/c"] and out[2].startswith(warning)
    assert run(svc, d, env).render() == "no changes"
    edit(d / "zed.yaml", "metadata_file: 'idp.xml'", "metadata_file: 'idp.xml', sp_entity_id: 'urn:zed:sp'")
    out = run(svc, d, env).render().splitlines()
    assert out[0] == "~ connection zed/c: saml.sp_entity_id"
    moved = [line for line in out if "connection_urls_changed" in line]
    assert moved == ["  ! connection zed/c: connection_urls_changed: this change changed its SP entityID "
                     "http://broker.test/t/zed/connections/c/saml/metadata -> urn:zed:sp; logins fail until the "
                     "IdP's configuration for this SP is updated."]


# -- YAML: sizes, depth, keys, and plain yes/no where a string is wanted ---------------------------------------


YAML_REFUSED: dict[str, tuple[str, str]] = {
    "long_string_behind_aliases": (  # 100 KB x 200 aliases = 20 MB of text in 203 values
        "x: &x '" + "a" * 100_000 + "'\ny: [" + ", ".join(["*x"] * 200) + "]\n",
        "invalid YAML: more than 16,777,216 characters once its aliases are expanded",
    ),
    "nested_500_deep": ("[" * 500 + "]" * 500 + "\n", "line 1, column 101: invalid YAML: nested more than 100"),
    "complex_key": (
        "tenants:\n  - ? [a, b]\n    : c\n",
        "line 2, column 7: invalid YAML: a mapping key must be a plain value, not a list or a mapping",
    ),
    "recursive_alias": (
        "x: &x [*x]\n", "line 1, column 4: invalid YAML: an alias refers to a collection that contains it"),
    "no_in_a_rule": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml, mapping: {rules:"
        " [{op: map_values, from: groups, to: roles, table: {A: admin}, default: no}]}}]}]\n",
        "tenants[0].connections[0].mapping.rules[0].default: YAML 1.1 reads a plain no as the boolean false: "
        "write 'no' (quoted) for the text, or false for a boolean",
    ),
    "on_as_a_table_key": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml, mapping: {rules:"
        " [{op: map_values, from: groups, to: roles, table: {on: admin}}]}}]}]\n",
        "tenants[0].connections[0].mapping.rules[0].table.on: YAML 1.1 reads a plain on as the boolean true",
    ),
    "number_as_tenant_name": (
        "tenants: [{slug: zed, name: 1234}]\n",
        "tenants[0].name: must be a string, and YAML read this as a number (1234): quote it (e.g. '1234')",
    ),
    "number_as_oidc_client_id": (
        OIDC_ZED.replace("client_id: zed", "client_id: 123").format(secret="client_secret: s3cret"),
        "tenants[0].connections[0].oidc.client_id: must be a string, and YAML read this as a number (123)",
    ),
    "yes_as_a_domain": (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml, domains: [yes]}]}]\n",
        "tenants[0].connections[0].domains[0]: YAML 1.1 reads a plain yes as the boolean true",
    ),
}


@pytest.mark.parametrize("case", sorted(YAML_REFUSED))
def test_yaml_that_would_mislead_or_exhaust_is_refused_with_its_place(
    svc: Services, tmp_path: Path, env: dict[str, str], case: str
) -> None:
    import time

    text, expected = YAML_REFUSED[case]
    d = one_file(tmp_path, text)
    started = time.process_time()
    with pytest.raises(ConfigFileError) as err:
        run(svc, d, env)
    assert time.process_time() - started < 2.0
    assert err.value.message.startswith(f"{d / 'zed.yaml'}: {expected}"), err.value.message
    assert svc.config.tenants() == []


def test_yes_and_no_are_booleans_in_boolean_fields_and_quoted_words_stay_words(
    svc: Services, tmp_path: Path, env: dict[str, str]
) -> None:
    d = one_file(tmp_path, (
        "tenants: [{slug: zed, name: Zed, connections: [{slug: c, protocol: saml, enabled: no,"
        " restrict_to_domains: yes, domains: [zed.example], mapping: {rules: [{op: map_values, from: groups,"
        " to: roles, table: {A: 'on'}, default: 'no'}]}}]}]\n"))
    run(svc, d, env)
    zed = svc.config.tenant_by_slug("zed")
    assert zed is not None
    c = svc.config.connection(zed.id, "c")
    assert c is not None and c.enabled is False and c.restrict_to_domains is True
    assert c.mapping.rules[0]["default"] == "no" and c.mapping.rules[0]["table"] == {"A": "on"}


def test_a_message_that_names_its_field_does_not_repeat_it(
    svc: Services, tmp_path: Path, env: dict[str, str]
) -> None:
    d = one_file(tmp_path, OIDC_ZED.replace("https://idp.zed.example", "ftp://idp.zed.example")
                 .format(secret="client_secret: s3cret"))
    with pytest.raises(ConfigFileError) as err:
        run(svc, d, env)
    assert err.value.path == "tenants[0].connections[0].oidc.issuer"
    assert "oidc.issuer" not in err.value.problem, err.value.problem


def test_upper_case_yaml_suffixes_are_read(svc: Services, tmp_path: Path, env: dict[str, str]) -> None:
    d = one_file(tmp_path, "tenants: [{slug: zed, name: Zed}]\n", "ZED.YAML")
    (d / "other.Yml").write_text("tenants: [{slug: other, name: Other}]\n")
    assert lines(run(svc, d, env)) == ["+ tenant zed", "+ tenant other"]


def test_an_app_secret_moves_to_the_current_secret_key_after_a_rotation(
        database_url: str, conf: Path, env: dict[str, str]) -> None:
    """After BROKER_SECRET_KEY rotates, an app's digest still verifies through the previous key; the files hold
    the plaintext, so apply re-digests it under the current key (the old key can then be retired)."""
    old_key, new_key = "o" * 40, "n" * 40
    before = build_services(load_settings(make_env(database_url, BROKER_SECRET_KEY=old_key)))
    try:
        run(before, conf, env)
    finally:
        before.extras["engine"].dispose()
    rotated = build_services(load_settings(make_env(database_url, BROKER_SECRET_KEY=new_key,
                                                    BROKER_SECRET_KEY_PREVIOUS=old_key)))
    try:
        rotated.config.reseal_all()
        result = run(rotated, conf, env)
        assert "~ app acme/acme-portal: client_secret" in lines(result)
        assert run(rotated, conf, env).changes == ()
    finally:
        rotated.extras["engine"].dispose()
    retired = build_services(load_settings(make_env(database_url, BROKER_SECRET_KEY=new_key)))
    try:
        app = retired.config.app(retired.config.tenant_by_slug("acme").id, "acme-portal")
        assert app is not None and app.client_secret_hash is not None
        assert retired.admin.hasher.verify(SECRETS["ACME_PORTAL_CLIENT_SECRET"], app.client_secret_hash)
    finally:
        retired.extras["engine"].dispose()
