"""Declarative config: `broker config apply DIR` — YAML files to a validated plan, applied in one transaction.

Every `*.yaml` / `*.yml` file in DIR (sorted, not recursive) holds `tenants: [...]`. Connection and app
entries are admin API bodies (admin/schema.py) plus three file-only references that keep data and secrets
out of the YAML: `saml.metadata_file` (a path relative to the YAML file), `oidc.client_secret_env` and an
app's `client_secret_env` (names of environment variables). A `${NAME}` inside any string value is replaced
by the environment variable NAME, which must be set (e.g. `issuer: ${BROKER_PUBLIC_URL}/dev/idp/oidc`).
Everything is validated first by the admin API's own code (schema.parse, AdminService._draft /
_app_draft); only then is the plan written, inside one `store.atomic()` transaction, so an error anywhere
leaves the database exactly as it was.

The plan compares the normalized desired spec with what is stored: generated values (SP key pairs, signing
keys, timestamps, versions) are never differences, and nothing is regenerated or rotated on re-apply.
`prune` deletes connections and apps of the tenants the files name that the files no longer list; tenants
the files do not name are never touched (deleting a tenant is an explicit admin API call).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from broker.admin import schema
from broker.admin.service import AdminService, idp_initiated_problem
from broker.errors import BrokerError, ValidationFailed
from broker.issuer.keys import generate_signing_key
from broker.model import App, Connection, Tenant
from broker.ports import AppDraft, ConnectionDraft, NewSigningKey

YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 2 * 1024 * 1024
SIGNING_ALGS = ("RS256", "ES256")


# -- file-level schema (the connection and app entries are admin API bodies, checked by schema.py) -------


class KeysPolicy(schema.Strict):
    """`signing_alg`: an active signing key of this algorithm exists (created once, never rotated here)."""

    signing_alg: Literal["RS256", "ES256"] | None = None


class TenantEntry(schema.TenantCreate):
    connections: list[dict[str, Any]] = Field(default_factory=list, max_length=500)
    apps: list[dict[str, Any]] = Field(default_factory=list, max_length=500)
    keys: KeysPolicy = Field(default_factory=KeysPolicy)


class ConfigFile(schema.Strict):
    tenants: list[TenantEntry] = Field(default_factory=list)


# -- errors and results ----------------------------------------------------------------------------------


class ConfigFileError(ValidationFailed):
    """A problem in a config file: `<file>: <path inside it>: <problem>`. Nothing was applied."""

    def __init__(self, file: str, path: str, problem: str) -> None:
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {problem}", code="invalid_config",
                         details={"file": file, "path": path, "problem": problem})
        self.file = file
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Where:
    file: str
    path: str

    def at(self, sub: str) -> Where:
        if not sub:
            return self
        if sub.startswith("["):
            return Where(self.file, self.path + sub)
        return Where(self.file, f"{self.path}.{sub}" if self.path else sub)

    def error(self, problem: str) -> ConfigFileError:
        return ConfigFileError(self.file, self.path, problem)


@dataclass(frozen=True, slots=True)
class Change:
    op: Literal["+", "~", "-"]
    kind: Literal["tenant", "connection", "app", "key"]
    name: str
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        line = f"{self.op} {self.kind} {self.name}"
        return f"{line}: {', '.join(self.fields)}" if self.fields else line


@dataclass(frozen=True, slots=True)
class ApplyResult:
    changes: tuple[Change, ...]
    dry_run: bool
    files: tuple[str, ...]

    def count(self, op: str) -> int:
        return sum(1 for c in self.changes if c.op == op)

    def render(self) -> str:
        if not self.changes:
            return "no changes"
        lines = [str(c) for c in self.changes]
        plus, tilde, minus = self.count("+"), self.count("~"), self.count("-")
        if self.dry_run:
            lines.append(f"dry run: {plus} to create, {tilde} to update, {minus} to delete; nothing written")
        else:
            lines.append(f"applied: {plus} created, {tilde} updated, {minus} deleted")
        return "\n".join(lines)


# -- loading: files -> specs (no database) ---------------------------------------------------------------


@dataclass
class ConnectionSpec:
    where: Where
    body: schema.ConnectionBody
    renames: dict[str, str]  # schema field -> what the file called it (metadata_file, client_secret_env)


@dataclass
class AppSpec:
    where: Where
    body: schema.AppBody
    secret: str | None
    renames: dict[str, str]


@dataclass
class TenantSpec:
    where: Where
    slug: str
    name: str
    signing_alg: str | None
    connections: list[ConnectionSpec] = field(default_factory=list)
    apps: list[AppSpec] = field(default_factory=list)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain PyYAML keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode,
                       deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

MAX_YAML_NODES = 1_000_000  # per file, with aliases expanded (a real config is far below; an alias bomb is not)


def _expanded_nodes(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes `node` stands for once every alias is expanded (each alias counts as its whole target;
    computed once per node, so a bomb of nested aliases is measured without being expanded)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # a recursive alias counts once
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_nodes(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_nodes(k, memo) + _expanded_nodes(v, memo) for k, v in node.value)
    memo[id(node)] = total
    return total


def _load_yaml(text: str) -> Any:
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node, {}) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"more than {MAX_YAML_NODES:,} values once its aliases are expanded")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _dotted_to_path(dotted: str) -> str:
    """`connections.1.saml` -> `connections[1].saml` (pydantic locations as the files are written)."""
    out = ""
    for part in dotted.split("."):
        if part.isdigit():
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _error_field(exc: BrokerError) -> tuple[str, str]:
    """(field path relative to the body, problem) of a validation error raised by the admin code."""
    errors = exc.details.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        return _dotted_to_path(str(errors[0].get("field", ""))), str(errors[0].get("problem", exc.message))
    fld = exc.details.get("field")
    if isinstance(fld, str) and fld:
        return _dotted_to_path(fld), exc.message
    index = exc.details.get("index")
    if isinstance(index, int):
        return f"mapping.rules[{index}]", exc.message
    by_code = {"invalid_mapping_preset": "mapping.preset",
               "invalid_mapping_subject_source": "mapping.subject_source"}
    return by_code.get(exc.code, ""), exc.message


def _locate(where: Where, exc: BrokerError, renames: Mapping[str, str]) -> ConfigFileError:
    sub, problem = _error_field(exc)
    for schema_field, file_field in renames.items():
        if sub == schema_field or sub.startswith(schema_field + "."):
            sub = file_field + sub[len(schema_field):]
            break
    return where.at(sub).error(problem)


def _env_value(where: Where, name: Any, env: Mapping[str, str]) -> str:
    if not isinstance(name, str) or not name:
        raise where.error("must be the name of an environment variable")
    value = env.get(name)
    if value is None or value == "":
        raise where.error(f"environment variable {name} is not set")
    return value


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute_env(where: Where, value: Any, env: Mapping[str, str]) -> Any:
    """Replace every `${NAME}` in string values (not keys) with the environment variable NAME (must be set)."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: _env_value(where, m.group(1), env), value)
    if isinstance(value, list):
        return [_substitute_env(where.at(f"[{i}]"), v, env) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute_env(where.at(str(k)), v, env) for k, v in value.items()}
    return value


def _read_metadata_file(where: Where, ref: Any, base: Path) -> str:
    if not isinstance(ref, str) or not ref:
        raise where.error("must be a path to an IdP metadata XML file, relative to this YAML file")
    path = base / ref
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise where.error(f"{ref} is larger than {MAX_FILE_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise where.error(f"cannot read {ref}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise where.error(f"{ref} is not UTF-8 text") from None


def _connection_spec(where: Where, raw: dict[str, Any], base: Path, env: Mapping[str, str]) -> ConnectionSpec:
    body = dict(raw)
    renames: dict[str, str] = {}
    saml = body.get("saml")
    if isinstance(saml, dict) and "metadata_file" in saml:
        saml = dict(saml)
        ref = saml.pop("metadata_file")
        if "metadata_xml" in saml or "metadata_url" in saml:
            raise where.at("saml").error("give one of metadata_file, metadata_xml or metadata_url")
        saml["metadata_xml"] = _read_metadata_file(where.at("saml.metadata_file"), ref, base)
        renames["saml.metadata_xml"] = "saml.metadata_file"
        body["saml"] = saml
    oidc = body.get("oidc")
    if isinstance(oidc, dict) and "client_secret_env" in oidc:
        oidc = dict(oidc)
        name = oidc.pop("client_secret_env")
        if "client_secret" in oidc:
            raise where.at("oidc").error("give client_secret_env or client_secret, not both")
        oidc["client_secret"] = _env_value(where.at("oidc.client_secret_env"), name, env)
        renames["oidc.client_secret"] = "oidc.client_secret_env"  # noqa: S105 - field names
        body["oidc"] = oidc
    try:
        parsed = schema.parse(schema.ConnectionBody, body)
    except BrokerError as exc:
        raise _locate(where, exc, renames) from None
    return ConnectionSpec(where, parsed, renames)


def _app_spec(where: Where, raw: dict[str, Any], env: Mapping[str, str]) -> AppSpec:
    body = dict(raw)
    renames: dict[str, str] = {}
    if "client_id" not in body:
        raise where.at("client_id").error("is required: apps in config files have a fixed client_id")
    if "client_secret_env" in body:
        name = body.pop("client_secret_env")
        if "client_secret" in body:
            raise where.error("give client_secret_env or client_secret, not both")
        body["client_secret"] = _env_value(where.at("client_secret_env"), name, env)
        renames["client_secret"] = "client_secret_env"  # noqa: S105 - field names
    try:
        parsed = schema.parse(schema.AppBody, body)
        AdminService._app_draft(parsed)  # noqa: SLF001 - the admin API's own check, reused on purpose
    except BrokerError as exc:
        raise _locate(where, exc, renames) from None
    return AppSpec(where, parsed, parsed.client_secret, renames)


def config_files(directory: str | Path) -> list[Path]:
    """The YAML files `config apply` reads: DIR's *.yaml / *.yml sorted by name, or DIR itself if a file."""
    d = Path(directory)
    if d.is_file():
        return [d]
    if not d.is_dir():
        raise ConfigFileError(str(directory), "", "no such directory")
    files = sorted(p for p in d.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
    if not files:
        raise ConfigFileError(str(directory), "", "no *.yaml or *.yml files here")
    return files


def load_file(path: Path, env: Mapping[str, str]) -> list[TenantSpec]:
    name = str(path)
    top = Where(name, "")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise top.error(f"larger than {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise top.error(f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise top.error("not UTF-8 text") from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = str(getattr(exc, "problem", None) or exc)
        context = getattr(exc, "context", None)
        if context:
            problem = f"{context}: {problem}"
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigFileError(name, where, f"invalid YAML: {problem}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise top.error("must be a mapping with a `tenants` list")
    unstorable = schema.unstorable_text(data)
    if unstorable is not None:
        raise top.error(f"{unstorable} holds a NUL character or an unpaired surrogate, which cannot be stored")
    data = _substitute_env(top, data, env)
    try:
        parsed = schema.parse(ConfigFile, data)
    except BrokerError as exc:
        raise _locate(top, exc, {}) from None
    base = path.parent
    out: list[TenantSpec] = []
    for i, t in enumerate(parsed.tenants):
        tw = top.at(f"tenants[{i}]")
        spec = TenantSpec(tw, t.slug, t.name, t.keys.signing_alg)
        for j, c in enumerate(t.connections):
            spec.connections.append(_connection_spec(tw.at(f"connections[{j}]"), c, base, env))
        for j, a in enumerate(t.apps):
            spec.apps.append(_app_spec(tw.at(f"apps[{j}]"), a, env))
        out.append(spec)
    return out


def load_specs(directory: str | Path, env: Mapping[str, str]) -> tuple[list[Path], list[TenantSpec]]:
    files = config_files(directory)
    tenants: list[TenantSpec] = []
    for f in files:
        tenants.extend(load_file(f, env))
    _check_unique(tenants)
    return files, tenants


def _check_unique(tenants: Sequence[TenantSpec]) -> None:
    """Slugs, client_ids and domains named twice in the files (checked before looking at the database)."""
    seen_tenants: dict[str, Where] = {}
    for t in tenants:
        seen_clients: dict[str, Where] = {}  # client_ids are unique per tenant
        if t.slug in seen_tenants:
            first = seen_tenants[t.slug]
            raise t.where.at("slug").error(
                f"tenant {t.slug!r} is already defined at {first.file}: {first.path}")
        seen_tenants[t.slug] = t.where
        seen_conns: dict[str, Where] = {}
        seen_domains: dict[str, str] = {}
        for c in t.connections:
            if c.body.slug in seen_conns:
                raise c.where.at("slug").error(
                    f"connection {c.body.slug!r} is already defined at {seen_conns[c.body.slug].path}")
            seen_conns[c.body.slug] = c.where
            for d in c.body.domains:
                if d in seen_domains:
                    raise c.where.at("domains").error(
                        f"domain {d} is already used by connection {seen_domains[d]!r} of this tenant")
                seen_domains[d] = c.body.slug
        for a in t.apps:
            cid = str(a.body.client_id)
            if cid in seen_clients:
                first = seen_clients[cid]
                raise a.where.at("client_id").error(
                    f"client_id {cid!r} is already defined at {first.file}: {first.path}")
            seen_clients[cid] = a.where


# -- planning: specs + database -> changes (no writes) ---------------------------------------------------


def _json(where: Where, value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise where.error("contains a value that is not plain JSON data (e.g. a date); quote it") from None


def _connection_state(protocol: str, domains: Sequence[str], restrict: bool, enabled: bool, preset: str,
                      rules: Sequence[Mapping[str, Any]], subject_source: str | None,
                      settings: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {
        "domains": list(domains),
        "restrict_to_domains": restrict,
        "enabled": enabled,
        "mapping.preset": preset,
        "mapping.rules": [dict(r) for r in rules],
        "mapping.subject_source": subject_source,
    }
    for k in sorted(settings):
        if settings[k] is not None:
            state[f"{protocol}.{k}"] = settings[k]
    return state


def _draft_state(d: ConnectionDraft) -> dict[str, Any]:
    return _connection_state(d.protocol, d.domains, d.restrict_to_domains, d.enabled, d.mapping.preset,
                             d.mapping.rules, d.mapping.subject_source, {**d.settings, **d.secrets})


def _stored_state(c: Connection) -> dict[str, Any]:
    return _connection_state(c.protocol, c.domains, c.restrict_to_domains, c.enabled, c.mapping.preset,
                             c.mapping.rules, c.mapping.subject_source, c.settings)


def _differences(current: Mapping[str, Any], desired: Mapping[str, Any]) -> tuple[str, ...]:
    keys = list(desired) + [k for k in current if k not in desired]
    return tuple(k for k in keys if current.get(k) != desired.get(k))


_APP_FIELDS = ("name", "redirect_uris", "post_logout_redirect_uris", "public", "allowed_scopes",
               "token_endpoint_auth_method", "id_token_signed_response_alg", "access_token_ttl",
               "id_token_ttl", "refresh_token_ttl", "subject_type")


@dataclass
class _Op:
    change: Change
    where: Where | None
    run: Callable[[], None]  # executed in plan order inside the transaction
    tenant: int = 0  # position of its tenant in the files: the printed diff is grouped by tenant


@dataclass
class _Planner:
    admin: AdminService
    prune: bool

    def plan(self, tenants: Sequence[TenantSpec]) -> list[_Op]:
        store = self.admin.store
        existing = {t.slug: t for t in store.tenants()}
        deletes: list[_Op] = []
        writes: list[_Op] = []
        for i, spec in enumerate(tenants):
            tenant = existing.get(spec.slug)
            tdel, twrite = self._tenant(spec, tenant)
            for op in tdel + twrite:
                op.tenant = i
            deletes.extend(tdel)
            writes.extend(twrite)
        # Tenants first, then every deletion (a domain may move), then everything else.
        tenant_ops = [o for o in writes if o.change.kind == "tenant"]
        rest = [o for o in writes if o.change.kind != "tenant"]
        return tenant_ops + deletes + rest

    def _tenant(self, spec: TenantSpec, tenant: Tenant | None) -> tuple[list[_Op], list[_Op]]:
        store = self.admin.store
        deletes: list[_Op] = []
        writes: list[_Op] = []
        ref: dict[str, Tenant] = {}
        if tenant is None:
            def create_tenant() -> None:
                gen = generate_signing_key("RS256")
                ref["t"] = store.create_tenant(
                    spec.slug, spec.name, NewSigningKey(gen.kid, gen.alg, gen.private_pem, gen.public_jwk))
                self._audit("tenant.create", spec.slug)
            writes.append(_Op(Change("+", "tenant", spec.slug), spec.where, create_tenant))
        else:
            ref["t"] = tenant
            if tenant.name != spec.name:
                t_id = tenant.id

                def update_tenant() -> None:
                    store.update_tenant(t_id, name=spec.name)
                    self._audit("tenant.update", spec.slug)
                writes.append(_Op(Change("~", "tenant", spec.slug, ("name",)), spec.where.at("name"),
                                  update_tenant))

        current_conns = {c.slug: c for c in store.connections(tenant.id)} if tenant else {}
        current_apps = {a.client_id: a for a in store.apps(tenant.id)} if tenant else {}
        wanted_conns = {c.body.slug for c in spec.connections}
        wanted_apps = {str(a.body.client_id) for a in spec.apps}

        kept: dict[str, Connection] = {}
        for slug, c in current_conns.items():
            if slug in wanted_conns:
                continue
            if self.prune:
                deletes.append(self._delete_connection(spec.slug, c))
            else:
                kept[slug] = c
        for cid, a in current_apps.items():
            if cid not in wanted_apps and self.prune:
                deletes.append(self._delete_app(spec.slug, a))

        def redirect_uris_of(client_id: str) -> Sequence[str] | None:
            """An app the files name (as they will leave it), else one kept in the database."""
            for ap in spec.apps:
                if str(ap.body.client_id) == client_id:
                    return tuple(ap.body.redirect_uris)
            kept_app = current_apps.get(client_id)
            return kept_app.redirect_uris if kept_app is not None and not self.prune else None

        for cs in spec.connections:
            writes.extend(self._connection(spec, ref, cs, current_conns.get(cs.body.slug), kept,
                                           redirect_uris_of))
        for ap in spec.apps:
            writes.extend(self._app(spec, ref, ap, current_apps.get(str(ap.body.client_id))))

        algs = {spec.signing_alg} if spec.signing_alg else set()
        algs |= {a.body.id_token_signed_response_alg for a in spec.apps}
        active = {k.alg for k in store.signing_keys(tenant.id) if k.active} if tenant else {"RS256"}
        for alg in sorted(a for a in algs if a not in active):
            writes.append(self._add_key(spec, ref, alg))
        return deletes, writes

    def _audit(self, action: str, tenant: str, **details: Any) -> None:
        self.admin._admin_event(None, action, tenant, via="config apply", **details)  # noqa: SLF001

    def _delete_connection(self, tenant: str, c: Connection) -> _Op:
        def run() -> None:
            self.admin.store.delete_connection(c.id)
            self._audit("connection.delete", tenant, connection=c.slug)
        return _Op(Change("-", "connection", f"{tenant}/{c.slug}"), None, run)

    def _delete_app(self, tenant: str, a: App) -> _Op:
        def run() -> None:
            self.admin.store.delete_app(a.id)
            self._audit("app.delete", tenant, app=a.client_id)
        return _Op(Change("-", "app", f"{tenant}/{a.client_id}"), None, run)

    def _connection(self, spec: TenantSpec, ref: Mapping[str, Tenant], cs: ConnectionSpec,
                    current: Connection | None, kept: Mapping[str, Connection],
                    redirect_uris_of: Callable[[str], Sequence[str] | None]) -> list[_Op]:
        store = self.admin.store
        try:
            draft, understood = self.admin._draft(cs.body, current)  # noqa: SLF001 - the admin API's validation
        except BrokerError as exc:
            raise _locate(cs.where, exc, cs.renames) from None
        problem = idp_initiated_problem(draft.settings, redirect_uris_of)
        if problem is not None:
            raise cs.where.at(f"saml.{problem[0]}").error(problem[1])
        for other in kept.values():
            clash = sorted(set(other.domains) & set(draft.domains))
            if clash:
                raise cs.where.at("domains").error(
                    f"domain {clash[0]} is already used by connection {other.slug!r} of this tenant, "
                    "which the files do not name (remove it, or apply with --prune)")
        desired = _json(cs.where, _draft_state(draft))
        name = f"{spec.slug}/{cs.body.slug}"
        if current is None:
            def create() -> None:
                created = store.create_connection(ref["t"].id, draft)
                self.admin._keep_fetched(created, understood)  # noqa: SLF001 - a metadata_url's first good copy
                self._audit("connection.create", spec.slug, connection=cs.body.slug)
            return [_Op(Change("+", "connection", name), cs.where, create)]
        changed = _differences(_json(cs.where, _stored_state(current)), desired)
        if not changed:
            return []

        def replace() -> None:
            replaced = store.replace_connection(current.id, draft)
            self.admin._keep_fetched(replaced, understood)  # noqa: SLF001
            self._audit("connection.update", spec.slug, connection=cs.body.slug, fields=list(changed))
        return [_Op(Change("~", "connection", name, changed), cs.where, replace)]

    def _app(self, spec: TenantSpec, ref: Mapping[str, Tenant], ap: AppSpec,
             current: App | None) -> list[_Op]:
        store, hasher = self.admin.store, self.admin.hasher
        try:
            draft: AppDraft = AdminService._app_draft(ap.body)  # noqa: SLF001
        except BrokerError as exc:
            raise _locate(ap.where, exc, ap.renames) from None
        cid = str(ap.body.client_id)
        name = f"{spec.slug}/{cid}"
        secret = ap.secret
        if current is None:
            if not draft.public and secret is None:
                raise ap.where.at("client_secret_env").error(
                    "a confidential app needs a secret: name the environment variable that holds it")

            def create() -> None:
                store.create_app(ref["t"].id, cid, draft, hasher.digest(secret) if secret else None)
                self._audit("app.create", spec.slug, app=cid)
            return [_Op(Change("+", "app", name), ap.where, create)]
        changed = [f for f in _APP_FIELDS if getattr(current, f) != getattr(draft, f)]
        secret_hash = current.client_secret_hash
        if draft.public:
            secret_hash = None
        elif secret is not None:
            if secret_hash is None or not hasher.verify(secret, secret_hash):
                secret_hash = hasher.digest(secret)
                changed.append("client_secret")
        elif secret_hash is None:
            raise ap.where.at("client_secret_env").error(
                "turning a public app confidential needs a secret: "
                "name the environment variable that holds it")
        if not changed:
            return []
        new_hash = secret_hash

        def replace() -> None:
            store.replace_app(current.id, draft, new_hash)
            self._audit("app.update", spec.slug, app=cid, fields=list(changed))
        return [_Op(Change("~", "app", name, tuple(changed)), ap.where, replace)]

    def _add_key(self, spec: TenantSpec, ref: Mapping[str, Tenant], alg: str) -> _Op:
        def run() -> None:
            gen = generate_signing_key(alg)
            new = self.admin.store.add_signing_key(
                ref["t"].id, NewSigningKey(gen.kid, gen.alg, gen.private_pem, gen.public_jwk))
            self._audit("keys.create", spec.slug, kid=new.kid, alg=alg)
        return _Op(Change("+", "key", f"{spec.slug}/{alg}"), spec.where.at("keys"), run)


def _display_order(op: _Op) -> tuple[int, int]:
    """Per tenant: the tenant itself, deletions, connections and apps, keys."""
    rank = {"tenant": 0, "key": 3}.get(op.change.kind, 1 if op.change.op == "-" else 2)
    return op.tenant, rank


# -- entry point -----------------------------------------------------------------------------------------


def apply_config(
    admin: AdminService,
    directory: str | Path,
    *,
    dry_run: bool = False,
    prune: bool = False,
    env: Mapping[str, str] | None = None,
) -> ApplyResult:
    """Validate every file, then (unless dry_run) apply the whole plan in one transaction.

    Raises ConfigFileError (a ValidationFailed) naming the file, the path inside it and the problem; when it
    does, nothing was written.
    """
    files, tenants = load_specs(directory, os.environ if env is None else env)
    with admin.store.atomic():
        ops = _Planner(admin, prune).plan(tenants)
        if not dry_run:
            for op in ops:
                try:
                    op.run()
                except BrokerError as exc:
                    where = op.where or Where(str(directory), "")
                    raise where.error(f"could not {op.change}: {exc.message}") from None
    shown = sorted(ops, key=_display_order)
    return ApplyResult(tuple(o.change for o in shown), dry_run, tuple(str(f) for f in files))
