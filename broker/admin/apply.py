"""Declarative config: `broker config apply DIR` — YAML files to a validated plan, applied in one transaction.

Every `*.yaml` / `*.yml` file in DIR (sorted, not recursive, suffix in any case) holds `tenants: [...]`.
Connection and app entries are admin API bodies (admin/schema.py) plus three file-only references that keep
data and secrets out of the YAML: `saml.metadata_file` (a path relative to the YAML file, which must stay
inside the repository: see config_root), `oidc.client_secret_env` and an app's `client_secret_env`
(names of environment variables). A `${NAME}` inside any string value is replaced by the environment variable
NAME, which must be set (e.g. `issuer: ${BROKER_PUBLIC_URL}/dev/idp/oidc`). The broker's own secrets can never
be referenced, and BROKER_CONFIG_ENV_ALLOW narrows what can; a value read from the environment never appears
in an error message.
Everything is validated first by the admin API's own code (schema.parse, AdminService._draft /
_app_draft); only then is the plan written, inside one `store.atomic()` transaction that holds the lock of
every tenant it writes and refuses if anything it planned on changed meanwhile, so an error anywhere leaves
the database exactly as it was.

The plan compares the normalized desired spec with what is stored: generated values (SP key pairs, signing
keys, timestamps, versions) are never differences, and nothing is regenerated or rotated on re-apply.
`prune` deletes connections and apps of the tenants the files name that the files no longer list; tenants
the files do not name are never touched (deleting a tenant is an explicit admin API call).
"""

from __future__ import annotations

import json
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from broker.admin import schema
from broker.admin.service import AdminService, Understood, _subject_warning, idp_initiated_problem
from broker.errors import BrokerError, ValidationFailed
from broker.issuer.keys import generate_signing_key
from broker.model import App, Connection, Tenant
from broker.ports import AppDraft, ConnectionDraft, NewSigningKey
from broker.samlxml.metadata import DEFAULT_MAX_BYTES as MAX_METADATA_BYTES
from broker.upstream.oidc import OidcSettings
from broker.upstream.saml import SamlSettings

YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 2 * 1024 * 1024
SIGNING_ALGS = ("RS256", "ES256")

# Environment variables that config files may never read, by ${NAME} or *_env: the broker's own secrets and
# the URLs that carry its database and Redis passwords (settings.py; PGPASSWORD is libpq's). A config author
# could otherwise copy one into a tenant name, or into a metadata_url that --dry-run fetches from any host.
DENIED_ENV = frozenset({
    "BROKER_SECRET_KEY", "BROKER_SECRET_KEY_PREVIOUS", "BROKER_BOOTSTRAP_ADMIN_KEY", "BROKER_METRICS_TOKEN",
    "DATABASE_URL", "REDIS_URL", "PGPASSWORD",
})
ENV_ALLOW_VAR = "BROKER_CONFIG_ENV_ALLOW"  # comma-separated names; `ACME_*` is a prefix; unset: any not denied
CONFIG_ROOT_VAR = "BROKER_CONFIG_ROOT"  # where metadata_file may point; unset: see config_root


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
    """A problem in a config file: `<file>: <path inside it>: <problem>`. Nothing was applied.
    `echoes_input`: the problem was written by validation code that may quote the value it refused."""

    def __init__(self, file: str, path: str, problem: str, *, echoes_input: bool = False) -> None:
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {problem}", code="invalid_config",
                         details={"file": file, "path": path, "problem": problem})
        self.file = file
        self.path = path
        self.problem = problem
        self.echoes_input = echoes_input


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

    def error(self, problem: str, *, echoes_input: bool = False) -> ConfigFileError:
        return ConfigFileError(self.file, self.path, problem, echoes_input=echoes_input)


@dataclass(frozen=True, slots=True)
class Change:
    op: Literal["+", "~", "-"]
    kind: Literal["tenant", "connection", "app", "key"]
    name: str
    fields: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # what the admin API would warn of on this save (`code: message`)

    def __str__(self) -> str:
        line = f"{self.op} {self.kind} {self.name}"
        return f"{line}: {', '.join(self.fields)}" if self.fields else line

    def warning_lines(self) -> list[str]:
        return [f"  ! {self.kind} {self.name}: {w}" for w in self.warnings]


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
        lines = [line for c in self.changes for line in (str(c), *c.warning_lines())]
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


MAX_YAML_NODES = 1_000_000  # per file, with aliases expanded (a real config is far below; an alias bomb is not)
MAX_YAML_CHARS = 16 * 1024 * 1024  # per file, characters of its scalars with aliases expanded (same reason)
MAX_YAML_DEPTH = 100  # collections inside collections (a real config nests about 8 deep)


class _YamlWord(str):
    """A plain `yes`/`no`/`on`/`off`: YAML 1.1 reads it as a boolean, while whoever wrote `default: no` meant
    the word. Kept as this marker until `_check_scalars` knows the field: a boolean there, refused elsewhere."""

    meaning: bool


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain PyYAML keeps the last one), a key
    that is a list or mapping, and nesting deeper than MAX_YAML_DEPTH (PyYAML's composer recurses per level,
    so `[[[[...` a few hundred deep would end in RecursionError)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", mark)
            node: yaml.Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode,
                       deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value, not a list or a mapping", key_node.start_mark)
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


def _construct_bool(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> bool | _YamlWord:
    meaning: bool = loader.construct_yaml_bool(node)
    if node.value.lower() in ("true", "false"):
        return meaning
    word = _YamlWord(node.value)
    word.meaning = meaning
    return word


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def _expanded_size(node: yaml.Node, memo: dict[int, tuple[int, int]], open_: set[int]) -> tuple[int, int]:
    """(nodes, characters) that `node` stands for once every alias is expanded (each alias counts as its whole
    target; computed once per node, so a bomb of nested aliases is measured without being expanded). Counting
    characters too catches one long string behind many aliases, which counts as few nodes. An alias inside
    the collection it names (a recursive structure) is refused: later walks would never end."""
    known = memo.get(id(node))
    if known is not None:
        return known
    if id(node) in open_:
        raise yaml.composer.ComposerError(None, None, "an alias refers to a collection that contains it",
                                          node.start_mark)
    open_.add(id(node))
    nodes, chars = 1, 0
    if isinstance(node, yaml.ScalarNode):
        chars = len(node.value)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    for child in children:
        n, c = _expanded_size(child, memo, open_)
        nodes, chars = nodes + n, chars + c
    open_.discard(id(node))
    memo[id(node)] = (nodes, chars)
    return nodes, chars


def _load_yaml(text: str) -> Any:
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        nodes, chars = _expanded_size(node, {}, set())
        if nodes > MAX_YAML_NODES:
            raise yaml.YAMLError(f"more than {MAX_YAML_NODES:,} values once its aliases are expanded")
        if chars > MAX_YAML_CHARS:
            raise yaml.YAMLError(f"more than {MAX_YAML_CHARS:,} characters once its aliases are expanded")
        return loader.construct_document(node)
    finally:
        loader.dispose()


# -- YAML scalars where the schema wants another type ------------------------------------------------------


def _kind(hint: Any) -> str | None:
    """"bool", "str" or "strs" (a list of strings) for a field's type hint, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            return None
        hint = args[0]
    if hint is bool:
        return "bool"
    if hint is str or (typing.get_origin(hint) is Literal and all(isinstance(a, str) for a in typing.get_args(hint))):
        return "str"
    if typing.get_origin(hint) in (list, tuple) and typing.get_args(hint)[:1] == (str,):
        return "strs"
    return None


def _field_kinds(cls: Any, file_only: Sequence[str] = ()) -> dict[str, str]:
    """Field name -> kind, read from the pydantic model or settings dataclass itself (so it stays in step)."""
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        hints = {name: f.annotation for name, f in cls.model_fields.items()}
    elif is_dataclass(cls):
        hints = typing.get_type_hints(cls)
    else:
        hints = {}
    kinds = {name: k for name, hint in hints.items() if (k := _kind(hint)) is not None}
    kinds.update(dict.fromkeys(file_only, "str"))
    return kinds


_SHAPES: dict[str, Any] = {}  # "tenants.connections.saml" (list indexes left out) -> field kinds, filled below


def _kinds_at(shape: str) -> Mapping[str, str]:
    if not _SHAPES:
        _SHAPES.update({
            "": _field_kinds(ConfigFile),
            "tenants": _field_kinds(TenantEntry),
            "tenants.keys": _field_kinds(KeysPolicy),
            "tenants.connections": _field_kinds(schema.ConnectionBody),
            "tenants.connections.mapping": _field_kinds(schema.MappingBody),
            "tenants.connections.saml": _field_kinds(SamlSettings, ("metadata_file",)),
            "tenants.connections.oidc": _field_kinds(OidcSettings, ("client_secret_env",)),
            "tenants.apps": _field_kinds(schema.AppBody, ("client_secret_env",)),
        })
    kinds: Mapping[str, str] = _SHAPES.get(shape, {})
    return kinds


def _word_problem(word: _YamlWord) -> str:
    return (f"YAML 1.1 reads a plain {word} as the boolean {str(word.meaning).lower()}: "
            f"write '{word}' (quoted) for the text, or {str(word.meaning).lower()} for a boolean")


def _not_a_string(value: Any) -> str:
    what = "a boolean" if isinstance(value, bool) else "a number"
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    return f"must be a string, and YAML read this as {what} ({shown}): quote it (e.g. '{shown}')"


def _check_scalars(where: Where, value: Any, shape: str | None, kind: str | None = None) -> Any:
    """`value` with every yes/no/on/off in a boolean field made a boolean. Refuses one anywhere else, and a
    boolean or number where the schema wants a string, instead of letting later code turn it into "false" or
    "123" (or say "is required" of a client_id: 123). `shape`: the field path without list indexes, for the
    fields the schema knows; None inside free-form data (mapping rules)."""
    if isinstance(value, _YamlWord):
        if kind == "bool":
            return value.meaning
        raise where.error(_word_problem(value))
    if kind in ("str", "strs") and isinstance(value, bool | int | float):
        raise where.error(_not_a_string(value))
    if isinstance(value, list):
        item_kind = "str" if kind == "strs" else None
        return [_check_scalars(where.at(f"[{i}]"), v, shape, item_kind) for i, v in enumerate(value)]
    if isinstance(value, dict):
        kinds = _kinds_at(shape) if shape is not None else {}
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, _YamlWord):
                raise where.at(str(k)).error(_word_problem(k))
            child = (f"{shape}.{k}" if shape else str(k)) if shape is not None else None
            out[k] = _check_scalars(where.at(str(k)), v, child, kinds.get(k) if isinstance(k, str) else None)
        return out
    return value


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


def _without_field_prefix(problem: str, *names: str) -> str:
    """`oidc.client_id: is required` -> `is required` when the message names the field it is located at
    already (the location is printed in front of it: saying it twice reads as a doubled path)."""
    for name in names:
        if name:
            for sep in (": ", " "):
                if problem.startswith(name + sep) and len(problem) > len(name) + len(sep):
                    return problem[len(name) + len(sep):]
    return problem


def _locate(where: Where, exc: BrokerError, renames: Mapping[str, str]) -> ConfigFileError:
    sub, problem = _error_field(exc)
    located = sub
    for schema_field, file_field in renames.items():
        if sub == schema_field or sub.startswith(schema_field + "."):
            located = file_field + sub[len(schema_field):]
            break
    problem = _without_field_prefix(problem, sub, located)
    return where.at(located).error(problem, echoes_input=True)


# -- the environment: ${NAME} and *_env, and keeping what they read out of messages ------------------------


@dataclass(frozen=True, slots=True)
class _FromEnv:
    file: str
    path: str
    label: str  # `${NAME}`, or `environment variable NAME`


@dataclass
class EnvAccess:
    """The environment as config files may read it: never a DENIED_ENV name; only names BROKER_CONFIG_ENV_ALLOW
    matches, when it is set (one CI job per team can keep each team to its own variables). It remembers where
    each value went, so that no error message shows one (a secret must not reach CI logs)."""

    env: Mapping[str, str]
    allow: tuple[str, ...] | None = None
    fields: list[_FromEnv] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # value read -> label

    @classmethod
    def of(cls, env: Mapping[str, str]) -> EnvAccess:
        raw = env.get(ENV_ALLOW_VAR) or ""
        allow = tuple(p.strip() for p in raw.split(",") if p.strip())
        return cls(env, allow if raw.strip() else None)

    def permitted(self, name: str) -> bool:
        if self.allow is None:
            return True
        return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in self.allow)

    def value(self, where: Where, name: Any, label: str) -> str:
        if not isinstance(name, str) or not name:
            raise where.error("must be the name of an environment variable")
        if name in DENIED_ENV:
            raise where.error(f"environment variable {name} holds a secret of the broker itself; "
                              "config files cannot read it")
        if not self.permitted(name):
            raise where.error(f"environment variable {name} is not allowed by {ENV_ALLOW_VAR} "
                              f"({', '.join(self.allow or ())})")
        value = self.env.get(name)
        if value is None or value == "":
            raise where.error(f"environment variable {name} is not set")
        self.values.setdefault(value, label)
        return value

    def mark(self, where: Where, labels: Sequence[str]) -> None:
        """The value at `where` came (partly) from the environment."""
        self.fields.extend(_FromEnv(where.file, where.path, label) for label in labels)

    def redact(self, exc: ConfigFileError) -> ConfigFileError:
        """`exc` without any value read from the environment. A problem that validation code wrote about a
        field holding one says where the value came from, and when it shows (any part of) one it is replaced
        by `invalid value (from ${NAME}; ...)`, since that code may quote its input, even cut or re-cased.
        Anywhere else, each such value is replaced by its `${NAME}`."""
        problem = exc.problem
        if exc.echoes_input:
            labels = ", ".join(dict.fromkeys(f.label for f in self.fields if f.file == exc.file
                                             and _within(f.path, exc.path)))
            if labels and not _QUOTES_NO_INPUT.match(problem) and any(_shows(problem, v) for v in self.values):
                problem = f"invalid value (from {labels}; the problem is not shown, as it quotes the value)"
            elif labels:
                problem = f"{problem} (from {labels})"
        for value in sorted(self.values, key=len, reverse=True):
            if len(value) >= MIN_REDACTED_CHARS and value in problem:
                problem = problem.replace(value, self.values[value])
        if problem == exc.problem:
            return exc
        return ConfigFileError(exc.file, exc.path, problem)


MIN_REDACTED_CHARS = 4  # a shorter value would be replaced inside unrelated words, and shows next to nothing
PART_CHARS = 8  # `_shows`: a run this long of a value, found in a message, counts as showing it
# pydantic's own messages for these never include the input (schema.parse leaves it out): safe to keep
_QUOTES_NO_INPUT = re.compile(r"(String should (have|match)|Input should be|List should have|Field required)")


def _shows(problem: str, value: str) -> bool:
    """`problem` holds `value`, or PART_CHARS of it in a row, in any case (a host cut out of a URL, a domain
    lower-cased). Errs towards yes: the caller then withholds a message, never shows a secret."""
    text, v = problem.lower(), value.lower()
    k = min(len(v), PART_CHARS)
    return any(v[i:i + k] in text for i in range(len(v) - k + 1))


def _within(inner: str, outer: str) -> bool:
    """`inner` is the field `outer` or inside it (an error about a list covers the items that came from ${})."""
    return inner == outer or not outer or inner.startswith((outer + ".", outer + "["))


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute_env(where: Where, value: Any, env: EnvAccess) -> Any:
    """Replace every `${NAME}` in string values (not keys) with the environment variable NAME (must be set)."""
    if isinstance(value, str):
        names = _ENV_REF.findall(value)
        if not names:
            return value
        env.mark(where, [f"${{{n}}}" for n in dict.fromkeys(names)])
        return _ENV_REF.sub(lambda m: env.value(where, m.group(1), f"${{{m.group(1)}}}"), value)
    if isinstance(value, list):
        return [_substitute_env(where.at(f"[{i}]"), v, env) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute_env(where.at(str(k)), v, env) for k, v in value.items()}
    return value


def _env_secret(where: Where, name: Any, env: EnvAccess) -> str:
    """The secret a `*_env` field names; errors about the field it fills never show it."""
    label = f"environment variable {name}"
    value = env.value(where, name, label)
    env.mark(where, [label])
    return value


# -- files on disk -----------------------------------------------------------------------------------------


def _read_capped(path: Path, limit: int, *, follow: bool = True) -> bytes:
    """At most `limit` bytes of a regular file (OSError otherwise, ValueError when larger). Checked before it
    is opened and again on the open descriptor, which is non-blocking: a FIFO cannot hang the command and
    /dev/zero cannot fill the memory; reading limit + 1 bytes catches a file that grew after the check.
    `follow=False`: a path already resolved, which must not have become a symlink since."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(0, "not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(0, "not a regular file")
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return raw


@dataclass(frozen=True, slots=True)
class _Sources:
    """Where a file's metadata_file references may lead: under `root` (the config directory, or
    BROKER_CONFIG_ROOT), at most `max_bytes` (the admin API's metadata size limit)."""

    root: Path
    max_bytes: int = MAX_METADATA_BYTES


def _read_metadata_file(where: Where, ref: Any, base: Path, sources: _Sources) -> str:
    if not isinstance(ref, str) or not ref:
        raise where.error("must be a path to an IdP metadata XML file, relative to this YAML file")
    try:
        path = (base / ref).resolve(strict=True)  # symlinks followed: where the file really is
    except (OSError, RuntimeError) as exc:
        raise where.error(f"cannot read {ref}: {getattr(exc, 'strerror', None) or exc}") from None
    if not path.is_relative_to(sources.root):
        raise where.error(f"{ref} is outside {sources.root}: metadata files must be inside the working directory "
                          f"or the directory holding the config directory (or set {CONFIG_ROOT_VAR} to a "
                          "directory that holds both)")
    try:
        raw = _read_capped(path, sources.max_bytes, follow=False)
    except ValueError:
        raise where.error(f"{ref} is larger than {sources.max_bytes} bytes") from None
    except OSError as exc:
        raise where.error(f"cannot read {ref}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise where.error(f"{ref} is not UTF-8 text") from None


def _connection_spec(where: Where, raw: dict[str, Any], base: Path, env: EnvAccess,
                     sources: _Sources) -> ConnectionSpec:
    body = dict(raw)
    renames: dict[str, str] = {}
    saml = body.get("saml")
    if isinstance(saml, dict) and "metadata_file" in saml:
        saml = dict(saml)
        ref = saml.pop("metadata_file")
        if "metadata_xml" in saml or "metadata_url" in saml:
            raise where.at("saml").error("give one of metadata_file, metadata_xml or metadata_url")
        saml["metadata_xml"] = _read_metadata_file(where.at("saml.metadata_file"), ref, base, sources)
        renames["saml.metadata_xml"] = "saml.metadata_file"
        body["saml"] = saml
    oidc = body.get("oidc")
    if isinstance(oidc, dict) and "client_secret_env" in oidc:
        oidc = dict(oidc)
        name = oidc.pop("client_secret_env")
        if "client_secret" in oidc:
            raise where.at("oidc").error("give client_secret_env or client_secret, not both")
        oidc["client_secret"] = _env_secret(where.at("oidc.client_secret_env"), name, env)
        renames["oidc.client_secret"] = "oidc.client_secret_env"  # noqa: S105 - field names
        body["oidc"] = oidc
    try:
        parsed = schema.parse(schema.ConnectionBody, body)
    except BrokerError as exc:
        raise _locate(where, exc, renames) from None
    return ConnectionSpec(where, parsed, renames)


def _app_spec(where: Where, raw: dict[str, Any], env: EnvAccess) -> AppSpec:
    body = dict(raw)
    renames: dict[str, str] = {}
    if "client_id" not in body:
        raise where.at("client_id").error("is required: apps in config files have a fixed client_id")
    if "client_secret_env" in body:
        name = body.pop("client_secret_env")
        if "client_secret" in body:
            raise where.error("give client_secret_env or client_secret, not both")
        body["client_secret"] = _env_secret(where.at("client_secret_env"), name, env)
        renames["client_secret"] = "client_secret_env"  # noqa: S105 - field names
    try:
        parsed = schema.parse(schema.AppBody, body)
        AdminService._app_draft(parsed)  # noqa: SLF001 - the admin API's own check, reused on purpose
    except BrokerError as exc:
        raise _locate(where, exc, renames) from None
    return AppSpec(where, parsed, parsed.client_secret, renames)


def config_files(directory: str | Path) -> list[Path]:
    """The YAML files `config apply` reads: DIR's *.yaml / *.yml (any case: `ACME.YML` too) sorted by name, or
    DIR itself if a file."""
    d = Path(directory)
    if d.is_file():
        return [d]
    if not d.is_dir():
        raise ConfigFileError(str(directory), "", "no such directory")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in YAML_SUFFIXES and p.is_file())
    if not files:
        raise ConfigFileError(str(directory), "", "no *.yaml or *.yml files here")
    return files


def config_root(directory: str | Path, env: Mapping[str, str], cwd: Path | None = None) -> Path:
    """The directory metadata_file references must stay in: BROKER_CONFIG_ROOT when set; else the working
    directory, when DIR is inside it (`broker config apply config/` run in a repository whose IdP metadata is
    in `metadata/`, SPEC's layout); else the directory holding DIR. Never the filesystem root. Resolved:
    symlinks cannot lead out of it."""
    configured = env.get(CONFIG_ROOT_VAR) or ""
    if configured.strip():
        return Path(configured).resolve()
    d = Path(directory).resolve()
    if d.is_file():
        d = d.parent
    here = (cwd or Path.cwd()).resolve()
    if d.is_relative_to(here) and here != Path(here.anchor):
        return here
    return d.parent if d.parent != Path(d.anchor) else d


def _yaml_problem(exc: yaml.YAMLError) -> tuple[str, str]:
    """(`line L, column C` or "", problem) of a PyYAML error."""
    mark = getattr(exc, "problem_mark", None)
    problem = str(getattr(exc, "problem", None) or exc)
    context = getattr(exc, "context", None)
    if context:
        problem = f"{context}: {problem}"
    return (f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""), problem


def load_file(path: Path, env: Mapping[str, str] | EnvAccess, sources: _Sources | None = None) -> list[TenantSpec]:
    access = env if isinstance(env, EnvAccess) else EnvAccess.of(env)
    sources = sources or _Sources(config_root(path, access.env))
    name = str(path)
    top = Where(name, "")
    try:
        text = _read_capped(path, MAX_FILE_BYTES).decode("utf-8-sig")
    except ValueError as exc:
        if isinstance(exc, UnicodeDecodeError):
            raise top.error("not UTF-8 text") from None
        raise top.error(f"larger than {MAX_FILE_BYTES} bytes") from None
    except OSError as exc:
        raise top.error(f"cannot read: {exc.strerror or exc}") from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        where, problem = _yaml_problem(exc)
        raise ConfigFileError(name, where, f"invalid YAML: {problem}") from None
    except RecursionError:  # the depth cap should make this unreachable; never a traceback all the same
        raise top.error(f"invalid YAML: nested more than {MAX_YAML_DEPTH} levels deep") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise top.error("must be a mapping with a `tenants` list")
    data = _check_scalars(top, data, "")
    unstorable = schema.unstorable_text(data)
    if unstorable is not None:
        raise top.error(f"{unstorable} holds a NUL character or an unpaired surrogate, which cannot be stored")
    data = _substitute_env(top, data, access)
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
            spec.connections.append(_connection_spec(tw.at(f"connections[{j}]"), c, base, access, sources))
        for j, a in enumerate(t.apps):
            spec.apps.append(_app_spec(tw.at(f"apps[{j}]"), a, access))
        out.append(spec)
    return out


def load_specs(directory: str | Path, env: Mapping[str, str] | EnvAccess, *,
               max_metadata_bytes: int = MAX_METADATA_BYTES) -> tuple[list[Path], list[TenantSpec]]:
    access = env if isinstance(env, EnvAccess) else EnvAccess.of(env)
    files = config_files(directory)
    sources = _Sources(config_root(directory, access.env), max_metadata_bytes)
    tenants: list[TenantSpec] = []
    try:
        for f in files:
            tenants.extend(load_file(f, access, sources))
        _check_unique(tenants)
    except ConfigFileError as exc:
        raise access.redact(exc) from None
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


@dataclass(frozen=True, slots=True)
class _Read:
    """What planning read of one tenant the files name (None: it did not exist), by (id, version): the write
    refuses if any of it changed meanwhile, since the plan (diffs, domain checks) was made on it."""

    where: Where
    slug: str
    tenant: Tenant | None
    connections: Mapping[str, tuple[str, int]]
    apps: Mapping[str, tuple[str, int]]


def _as_connection(draft: ConnectionDraft, tenant_id: str, tenant_slug: str,
                   current: Connection | None) -> Connection:
    """The connection a draft will be once saved (for the warnings that the admin API computes on it)."""
    now = datetime.now(UTC)
    return Connection(
        id=current.id if current else "", tenant_id=tenant_id, tenant_slug=tenant_slug, slug=draft.slug,
        protocol="saml" if draft.protocol == "saml" else "oidc", domains=draft.domains,
        restrict_to_domains=draft.restrict_to_domains,
        mapping=draft.mapping, settings=draft.settings, enabled=draft.enabled,
        version=current.version + 1 if current else 1, created_at=current.created_at if current else now,
        updated_at=now, sp=draft.sp)


@dataclass
class _Planner:
    admin: AdminService
    prune: bool
    read: list[_Read] = field(default_factory=list)  # per tenant spec, in file order

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
                t_id, t_version = tenant.id, tenant.version

                def update_tenant() -> None:
                    store.update_tenant(t_id, name=spec.name, expected_version=t_version)
                    self._audit("tenant.update", spec.slug)
                writes.append(_Op(Change("~", "tenant", spec.slug, ("name",)), spec.where.at("name"),
                                  update_tenant))

        current_conns = {c.slug: c for c in store.connections(tenant.id)} if tenant else {}
        current_apps = {a.client_id: a for a in store.apps(tenant.id)} if tenant else {}
        self.read.append(_Read(spec.where, spec.slug, tenant,
                               {slug: (c.id, c.version) for slug, c in current_conns.items()},
                               {cid: (a.id, a.version) for cid, a in current_apps.items()}))
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
            located = f"saml.{problem[0]}"
            raise cs.where.at(located).error(_without_field_prefix(problem[1], located))
        for other in kept.values():
            clash = sorted(set(other.domains) & set(draft.domains))
            if clash:
                raise cs.where.at("domains").error(
                    f"domain {clash[0]} is already used by connection {other.slug!r} of this tenant, "
                    "which the files do not name (remove it, or apply with --prune)")
        desired = _json(cs.where, _draft_state(draft))
        name = f"{spec.slug}/{cs.body.slug}"
        warnings = self._warnings(spec.slug, ref.get("t"), current, draft, understood)
        if current is None:
            def create() -> None:
                created = store.create_connection(ref["t"].id, draft)
                self.admin._keep_fetched(created, understood)  # noqa: SLF001 - a metadata_url's first good copy
                self._audit("connection.create", spec.slug, connection=cs.body.slug)
            return [_Op(Change("+", "connection", name, warnings=warnings), cs.where, create)]
        changed = _differences(_json(cs.where, _stored_state(current)), desired)
        if not changed:
            return []

        def replace() -> None:
            replaced = store.replace_connection(current.id, draft, current.version)
            self.admin._keep_fetched(replaced, understood)  # noqa: SLF001
            self._audit("connection.update", spec.slug, connection=cs.body.slug, fields=list(changed))
        return [_Op(Change("~", "connection", name, changed, warnings), cs.where, replace)]

    def _warnings(self, tenant_slug: str, tenant: Tenant | None, current: Connection | None,
                  draft: ConnectionDraft, understood: Any) -> tuple[str, ...]:
        """What the admin API answers a create or replace with (AdminService._saved and
        _moved_urls_warning): the IdP metadata's warnings (certificate_expired, certificate_weak_key,
        metadata_expired, ...), transient_subject, and connection_urls_changed when the SP entityID moves."""
        meta = understood.meta if isinstance(understood, Understood) else understood
        would_be = _as_connection(draft, tenant.id if tenant else "", tenant_slug, current)
        out = list(meta.warnings) if meta is not None else []
        if draft.protocol == "saml":
            out.append(_subject_warning(would_be, meta) or "")
        if current is not None and tenant is not None:
            out.append(self.admin._moved_urls_warning(tenant, current, would_be) or "")  # noqa: SLF001
        return tuple(dict.fromkeys(w for w in out if w))

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
            # also when the stored digest matches only under a previous BROKER_SECRET_KEY: the files hold the
            # plaintext, so the app moves to the current key before the old one is retired
            if secret_hash is None or secret_hash != hasher.digest(secret):
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
            store.replace_app(current.id, draft, new_hash, current.version)
            self._audit("app.update", spec.slug, app=cid, fields=list(changed))
        return [_Op(Change("~", "app", name, tuple(changed)), ap.where, replace)]

    def _add_key(self, spec: TenantSpec, ref: Mapping[str, Tenant], alg: str) -> _Op:
        def run() -> None:
            gen = generate_signing_key(alg)
            new = self.admin.store.add_signing_key(
                ref["t"].id, NewSigningKey(gen.kid, gen.alg, gen.private_pem, gen.public_jwk))
            self._audit("keys.create", spec.slug, kid=new.kid, alg=alg)
        return _Op(Change("+", "key", f"{spec.slug}/{alg}"), spec.where.at("keys"), run)


    # -- the write: under the tenants' locks, on what the plan read ----------------------------------------

    def write(self, ops: Sequence[_Op], directory: str | Path) -> None:
        """Run `ops` (inside the caller's transaction) holding the lock of every existing tenant they write,
        the lock the admin API takes around its domain checks. Planning read without it, so first check that
        nothing it read has changed since (an API PATCH would otherwise be overwritten unseen, and an API
        create could take a domain the plan gave away); afterwards check, under the locks, that no domain is
        now named by two connections of a tenant."""
        store = self.admin.store
        reads = [self.read[i] for i in sorted({op.tenant for op in ops})]
        for tenant in sorted((r.tenant for r in reads if r.tenant is not None), key=lambda t: t.id):
            store.lock_tenant(tenant.id)  # always in id order: two applies cannot wait on each other
        for r in reads:
            self._unchanged(r)
        for op in ops:
            try:
                op.run()
            except BrokerError as exc:
                where = op.where or Where(str(directory), "")
                raise where.error(f"could not {op.change}: {exc.message}") from None
        for r in reads:
            self._domains_once(r)

    def _unchanged(self, r: _Read) -> None:
        store = self.admin.store
        again = " since this apply read it; nothing was written: run config apply again"
        if r.tenant is None:
            if store.tenant_by_slug(r.slug) is not None:
                raise r.where.at("slug").error(f"tenant {r.slug} was created by someone else{again}")
            return
        now = store.tenant_by_id(r.tenant.id)
        if now is None or now.version != r.tenant.version:
            raise r.where.error(f"tenant {r.slug} was {'deleted' if now is None else 'changed'} by someone else{again}")
        for kind, before, after in (
            ("connection", r.connections, {c.slug: (c.id, c.version) for c in store.connections(r.tenant.id)}),
            ("app", r.apps, {a.client_id: (a.id, a.version) for a in store.apps(r.tenant.id)}),
        ):
            for key in sorted(set(before) | set(after)):
                if before.get(key) != after.get(key):
                    what = "created" if key not in before else "deleted" if key not in after else "changed"
                    raise r.where.error(f"{kind} {r.slug}/{key} was {what} by someone else{again}")

    def _domains_once(self, r: _Read) -> None:
        store = self.admin.store
        tenant = store.tenant_by_slug(r.slug)
        if tenant is None:
            return
        owner: dict[str, str] = {}
        for c in store.connections(tenant.id):
            for d in c.domains:
                if d in owner:
                    raise r.where.error(f"domain {d} would be used by connections {owner[d]!r} and {c.slug!r}; "
                                        "nothing was written")
                owner[d] = c.slug


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
    access = EnvAccess.of(os.environ if env is None else env)
    files, tenants = load_specs(directory, access, max_metadata_bytes=admin.max_metadata_bytes)
    planner = _Planner(admin, prune)
    try:
        with admin.store.atomic():  # reads past the configuration cache; writes nothing
            ops = planner.plan(tenants)
        if not dry_run and ops:
            with admin.store.atomic():  # a new transaction: it sees what others wrote since the plan read
                planner.write(ops, directory)
    except ConfigFileError as exc:
        raise access.redact(exc) from None
    shown = sorted(ops, key=_display_order)
    return ApplyResult(tuple(o.change for o in shown), dry_run, tuple(str(f) for f in files))
