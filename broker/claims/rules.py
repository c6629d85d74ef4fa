"""The closed set of claim-mapping rules: JSON objects validated and compiled at save time, applied at login.

Claims are multi-valued throughout: a claim is a name and a non-empty list of non-empty strings. A name that
is not in the working set is *absent*; empty strings are dropped and a claim left without values is removed.

Every rule is a JSON object with an `"op"` and the fields below (an optional `"comment"` string is allowed
on any rule; any other field is refused). Names are read by exact key first, then by SAML FriendlyName.
Ops that read and write the same claim take `"claim"`; or `"from"` plus an optional `"to"` (default: `from`).

Rules (fields with `?` are optional):
- copy: from, to, remove_source? (bool) -- to = from's values; from absent: nothing happens.
- rename: from, to -- copy, then remove `from`.
- first_of: from (a list of names), to -- to = the values of the first name present.
- template: to, template -- `"{given_name} {family_name}"`: each `{name}` is that claim's first value ("" if
  absent); `{{` and `}}` are literal braces; no format specs, no attribute access; the result is trimmed;
  nothing happens if no placeholder resolves.
- lowercase, trim: claim | from, to? -- per value.
- normalize_email: claim | from, to? -- trim + lowercase; values that are not one `local@domain` are
  dropped (with a warning).
- regex_extract: claim | from, to?, pattern, ignore_case? -- the first group of `re.search`; values that do
  not match are dropped.
- regex_replace: claim | from, to?, pattern, replacement, ignore_case? -- `re.sub`; in the replacement
  `\\0`..`\\9` are groups and `\\\\` is a backslash; nothing else is special.
- split: claim | from, to?, separator -- every value split; parts trimmed; empty parts dropped.
- join: claim | from, to?, separator -- one value.
- map_values: claim | from, to?, table, default?, keep_unmapped? -- each value looked up in `table` (an
  object; a value is a string or a list of strings); unmapped values are dropped (kept as they are with
  keep_unmapped); if nothing results, `default` (string or list) is used -- also when the source is absent.
- filter: claim | from, to?, pattern, ignore_case?, invert? -- keep the values `re.search` matches (invert:
  keep the others).
- constant: claim, value -- set (value: a string, a list of strings, or true/false, stored "true"/"false").
- default: claim, value -- set only if the claim is absent.
- require: claim -- absent: the login is refused (MappingError, code mapping_required_claim_missing).
- drop: claim -- remove.
Whenever a rule's result is empty, the written claim becomes absent. Claims whose names start with `_` are
scratch space: rules read and write them, the profile never shows them.

Written names must look like claim names (letters, digits and `_ . : / # @ + -`, up to 256 characters) and
may not be token claims the broker sets itself (`sub`, `iss`, `aud`, `tenant`, `idp`, `amr`, ... see
RESERVED_CLAIMS). Regular expressions are checked by patterns.py; regex ops never run on values longer than
MAX_MATCH_CHARS (4 KiB): such values count as not matching (and are left unchanged by regex_replace), with a
warning. Written values longer than MAX_VALUE_CHARS (64 KiB) are dropped, with a warning.
Everything is checked when the rules are saved, with `RuleError(index, message)`; applying never fails except
through `require` (and the subject check in pipeline.py).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.claims.patterns import MAX_MATCH_CHARS, PatternRefused, compile_pattern
from broker.errors import ValidationFailed

Claims = dict[str, list[str]]

MAX_RULES = 200
MAX_NAME_CHARS = 256
MAX_TEMPLATE_CHARS = 1024
MAX_PLACEHOLDERS = 16
MAX_SOURCES = 32
MAX_TABLE_ENTRIES = 1000
MAX_LIST_VALUES = 100
MAX_LITERAL_CHARS = 1024
MAX_SEPARATOR_CHARS = 16
MAX_REPLACEMENT_CHARS = 256
MAX_VALUE_CHARS = 65536

NAMEID = "nameid"
NAMEID_FORMAT = "nameid_format"

RESERVED_CLAIMS = frozenset(
    {
        "sub", "iss", "aud", "exp", "iat", "nbf", "jti", "nonce", "auth_time", "azp", "at_hash", "c_hash",
        "s_hash", "sid", "acr", "amr", "tenant", "connection", "idp", "scope", "client_id", "cnf", "typ",
        "token_type", "updated_at", NAMEID, NAMEID_FORMAT,
    }
)  # fmt: skip
_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/#@+\-]{0,255}")
_REPLACEMENT_PART = re.compile(r"\\(\d|\\)|([^\\]+)|(\\.?)", re.DOTALL)


class RuleError(ValidationFailed):
    """A mapping rule that cannot be saved. `index` is its position in the connection's own rule list."""

    default_code = "invalid_mapping_rule"

    def __init__(self, index: int, message: str) -> None:
        super().__init__(
            f"Mapping rule {index}: {message}", details={"index": index, "reason": message}
        )
        self.index = index
        self.reason = message


class RequiredClaimMissing(Exception):
    """Raised by `require` at login; pipeline.py turns it into a MappingError naming the connection."""

    def __init__(self, claim: str) -> None:
        super().__init__(claim)
        self.claim = claim


class ClaimSet:
    """The working claims of one login: values by name, FriendlyName aliases, names written, warnings."""

    def __init__(self, values: Claims, aliases: Mapping[str, str]) -> None:
        self.values = values
        self.aliases = aliases
        self.written: dict[str, None] = {}  # insertion-ordered set
        self.touched: set[str] = set()  # written or removed since the last reset (for explanations)
        self.warnings: list[str] = []

    def resolve(self, name: str) -> str | None:
        """The key a name refers to: itself if present, else the Name its FriendlyName stands for."""
        if name in self.values:
            return name
        real = self.aliases.get(name)
        if real is not None and real in self.values:
            return real
        return None

    def get(self, name: str) -> list[str] | None:
        key = self.resolve(name)
        return None if key is None else self.values[key]

    def put(self, name: str, values: Iterable[str]) -> None:
        kept: list[str] = []
        too_long = 0
        for value in values:
            if len(value) > MAX_VALUE_CHARS:
                too_long += 1
            elif value:
                kept.append(value)
        if too_long:
            self.warn(
                f"{too_long} value(s) of '{name}' longer than {MAX_VALUE_CHARS} characters were dropped"
            )
        if kept:
            self.values[name] = kept
        else:
            self.values.pop(name, None)
        self.written[name] = None
        self.touched.add(name)

    def remove(self, name: str) -> None:
        key = self.resolve(name)
        if key is not None:
            del self.values[key]
            self.touched.add(key)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


# --- the rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Rule:
    """A compiled rule. `spec` is the JSON it was compiled from (for explanations)."""

    index: int
    spec: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def op(self) -> str:
        return str(self.spec["op"])

    def apply(self, claims: ClaimSet) -> None:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Copy(Rule):
    source: str
    target: str
    remove_source: bool = False

    def apply(self, claims: ClaimSet) -> None:
        key = claims.resolve(self.source)
        if key is None:
            return
        claims.put(self.target, claims.values[key])
        if self.remove_source and key != self.target:
            claims.remove(key)


@dataclass(frozen=True, kw_only=True)
class FirstOf(Rule):
    sources: tuple[str, ...]
    target: str

    def apply(self, claims: ClaimSet) -> None:
        for source in self.sources:
            values = claims.get(source)
            if values is not None:
                claims.put(self.target, values)
                return


@dataclass(frozen=True, kw_only=True)
class Template(Rule):
    target: str
    parts: tuple[tuple[bool, str], ...]  # (is_placeholder, literal text or claim name)

    def apply(self, claims: ClaimSet) -> None:
        out: list[str] = []
        resolved = False
        has_placeholders = False
        for is_placeholder, text in self.parts:
            if not is_placeholder:
                out.append(text)
                continue
            has_placeholders = True
            values = claims.get(text)
            if values is not None:
                resolved = True
                out.append(values[0])
        if has_placeholders and not resolved:
            return
        result = "".join(out).strip()
        if result:
            claims.put(self.target, [result])


@dataclass(frozen=True, kw_only=True)
class Transform(Rule):
    """A rule that reads one claim and writes its transformed values (to the same or another claim)."""

    source: str
    target: str

    def apply(self, claims: ClaimSet) -> None:
        values = claims.get(self.source)
        if values is None:
            return
        claims.put(self.target, self.transform(values, claims))

    def transform(self, values: list[str], claims: ClaimSet) -> list[str]:
        raise NotImplementedError

    def _fits(self, value: str, claims: ClaimSet) -> bool:
        if len(value) <= MAX_MATCH_CHARS:
            return True
        claims.warn(
            f"rule {self.op} skipped a value of '{self.source}' longer than {MAX_MATCH_CHARS} characters"
        )
        return False


@dataclass(frozen=True, kw_only=True)
class Lowercase(Transform):
    def transform(self, values: list[str], claims: ClaimSet) -> list[str]:
        return [v.lower() for v in values]


@dataclass(frozen=True, kw_only=True)
class Trim(Transform):
    def transform(self, values: list[str], claims: ClaimSet) -> list[str]:
        return [v.strip() for v in values]


def is_email(value: str) -> bool:
    """One `@`, something on both sides, no whitespace or control characters, at most 320 characters."""
    if len(value) > 320 or value.count("@") != 1:
        return False
    local, _, domain = value.partition("@")
    return bool(local) and bool(domain) and value.isprintable() and not any(c.isspace() for c in value)


@dataclass(frozen=True, kw_only=True)
class NormalizeEmail(Transform):
    def transform(self, values: list[str], claims: ClaimSet) -> list[str]:
        out = []
        for value in values:
            email = value.strip().lower()
            if is_email(email):
                out.append(email)
            elif email:
                claims.warn(f"a value of '{self.source}' is not an email address and was dropped")
        return out


@dataclass(frozen=True, kw_only=True)
class RegexExtract(Transform):
    pattern: re.Pattern[str]

    def transform(self, values: list[str], claims: ClaimSet) -> list[str]:
        out = []
        for value in values:
            if not self._fits(value, claims):
                continue
            m = self.pattern.search(value)
            if m is not None and m.group(1):
                out.append(m.group(1))
        return out


@dataclass(frozen=True, kw_only=True)
class RegexReplace(Transform):
    pattern: re.Pattern[str]
    replacement: tuple[str | int, ...]  # literal text or a group number

    def _expand(self, m: re.Match[str]) -> str:
        return "".join(p if isinstance(p, str) else (m.group(p) or "") for p in self.replacement)

    def transform(self, values: list[str], claims: ClaimSet) -> list[str]:
        return [self.pattern.sub(self._expand, v) if self._fits(v, claims) else v for v in values]


@dataclass(frozen=True, kw_only=True)
class Split(Transform):
    separator: str

    def transform(self, values: list[str], claims: ClaimSet) -> list[str]:
        return [part.strip() for v in values for part in v.split(self.separator)]


@dataclass(frozen=True, kw_only=True)
class Join(Transform):
    separator: str

    def transform(self, values: list[str], claims: ClaimSet) -> list[str]:
        return [self.separator.join(values)]


@dataclass(frozen=True, kw_only=True)
class MapValues(Transform):
    table: Mapping[str, tuple[str, ...]] = field(compare=False)
    default: tuple[str, ...] = ()
    keep_unmapped: bool = False

    def apply(self, claims: ClaimSet) -> None:
        mapped = self.transform(claims.get(self.source) or [], claims)
        if mapped:
            claims.put(self.target, mapped)
        elif self.default:
            claims.put(self.target, self.default)
        elif claims.resolve(self.source) is not None:
            claims.put(self.target, [])

    def transform(self, values: list[str], claims: ClaimSet) -> list[str]:
        out: dict[str, None] = {}
        for value in values:
            found = self.table.get(value)
            if found is not None:
                out.update(dict.fromkeys(found))
            elif self.keep_unmapped:
                out[value] = None
        return list(out)


@dataclass(frozen=True, kw_only=True)
class Filter(Transform):
    pattern: re.Pattern[str]
    invert: bool = False

    def transform(self, values: list[str], claims: ClaimSet) -> list[str]:
        return [
            v for v in values if self._fits(v, claims) and (self.pattern.search(v) is None) == self.invert
        ]


@dataclass(frozen=True, kw_only=True)
class Constant(Rule):
    claim: str
    value: tuple[str, ...]

    def apply(self, claims: ClaimSet) -> None:
        claims.put(self.claim, self.value)


@dataclass(frozen=True, kw_only=True)
class Default(Rule):
    claim: str
    value: tuple[str, ...]

    def apply(self, claims: ClaimSet) -> None:
        if claims.get(self.claim) is None:
            claims.put(self.claim, self.value)


@dataclass(frozen=True, kw_only=True)
class Require(Rule):
    claim: str

    def apply(self, claims: ClaimSet) -> None:
        if claims.get(self.claim) is None:
            raise RequiredClaimMissing(self.claim)


@dataclass(frozen=True, kw_only=True)
class Drop(Rule):
    claim: str

    def apply(self, claims: ClaimSet) -> None:
        claims.remove(self.claim)


# --- compiling ---------------------------------------------------------------------------------------


class _Fields:
    """Typed reads of one rule's JSON fields; every failure is a RuleError naming the field."""

    def __init__(self, index: int, raw: Mapping[str, Any]) -> None:
        self.index = index
        self.raw = raw
        self.used = {"op", "comment"}

    def fail(self, message: str) -> RuleError:
        return RuleError(self.index, message)

    def has(self, name: str) -> bool:
        return name in self.raw

    def text(self, name: str, *, max_chars: int, allow_empty: bool = False) -> str:
        self.used.add(name)
        if name not in self.raw:
            raise self.fail(f"the field '{name}' is required")
        value = self.raw[name]
        if not isinstance(value, str):
            raise self.fail(f"the field '{name}' must be a string")
        if not value and not allow_empty:
            raise self.fail(f"the field '{name}' must not be empty")
        if len(value) > max_chars:
            raise self.fail(f"the field '{name}' is longer than {max_chars} characters")
        return value

    def source(self, name: str) -> str:
        return self.text(name, max_chars=MAX_NAME_CHARS)

    def target(self, name: str) -> str:
        return self.check_target(name, self.text(name, max_chars=MAX_NAME_CHARS))

    def check_target(self, field_name: str, value: str) -> str:
        if not _TARGET.fullmatch(value):
            raise self.fail(
                f"the field '{field_name}' must be a claim name: a letter or '_' followed by letters, digits "
                "or _ . : / # @ + -"
            )
        if value in RESERVED_CLAIMS:
            raise self.fail(f"the claim '{value}' is set by the broker and cannot be written by a rule")
        return value

    def flag(self, name: str) -> bool:
        self.used.add(name)
        value = self.raw.get(name, False)
        if not isinstance(value, bool):
            raise self.fail(f"the field '{name}' must be true or false")
        return value

    def values(self, name: str, *, required: bool = True) -> tuple[str, ...]:
        """A string, a non-empty list of strings, or a boolean (as "true"/"false")."""
        self.used.add(name)
        if name not in self.raw or self.raw[name] is None:
            if required:
                raise self.fail(f"the field '{name}' is required")
            return ()
        value = self.raw[name]
        if isinstance(value, bool):
            return ("true" if value else "false",)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or len(items) > MAX_LIST_VALUES:
            raise self.fail(
                f"the field '{name}' must be a string, true/false, "
                f"or a list of 1 to {MAX_LIST_VALUES} strings"
            )
        for item in items:
            if not isinstance(item, str) or not item or len(item) > MAX_LITERAL_CHARS:
                raise self.fail(
                    f"the field '{name}' must hold non-empty strings "
                    f"of at most {MAX_LITERAL_CHARS} characters"
                )
        return tuple(items)

    def names(self, name: str) -> tuple[str, ...]:
        self.used.add(name)
        value = self.raw.get(name)
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_SOURCES:
            raise self.fail(f"the field '{name}' must be a list of 1 to {MAX_SOURCES} claim names")
        for item in value:
            if not isinstance(item, str) or not item or len(item) > MAX_NAME_CHARS:
                raise self.fail(f"the field '{name}' must hold non-empty claim names")
        return tuple(value)

    def table(self, name: str) -> dict[str, tuple[str, ...]]:
        self.used.add(name)
        value = self.raw.get(name)
        if not isinstance(value, dict) or not 1 <= len(value) <= MAX_TABLE_ENTRIES:
            raise self.fail(f"the field '{name}' must be an object with 1 to {MAX_TABLE_ENTRIES} entries")
        out: dict[str, tuple[str, ...]] = {}
        for key, mapped in value.items():
            if not isinstance(key, str) or len(key) > MAX_LITERAL_CHARS:
                raise self.fail(
                    f"the keys of '{name}' must be strings of at most {MAX_LITERAL_CHARS} characters"
                )
            items = [mapped] if isinstance(mapped, str) else mapped
            if (
                not isinstance(items, list)
                or not items
                or len(items) > MAX_LIST_VALUES
                or not all(isinstance(i, str) and i and len(i) <= MAX_LITERAL_CHARS for i in items)
            ):
                raise self.fail(
                    f"the value for {key!r} in '{name}' must be a non-empty string or a list of them"
                )
            out[key] = tuple(items)
        return out

    def pattern(self) -> re.Pattern[str]:
        text = self.text("pattern", max_chars=10 * MAX_NAME_CHARS)
        ignore_case = self.flag("ignore_case")
        try:
            return compile_pattern(text, ignore_case=ignore_case)
        except PatternRefused as exc:
            raise self.fail(f"the field 'pattern' is refused: {exc}") from None

    def source_and_target(self) -> tuple[str, str]:
        """`claim` (in place), or `from` with an optional `to` (default: `from`)."""
        if self.has("claim"):
            if self.has("from") or self.has("to"):
                raise self.fail("use either 'claim' (in place) or 'from' with an optional 'to', not both")
            claim = self.target("claim")
            return claim, claim
        if not self.has("from"):
            raise self.fail("the field 'claim' (or 'from' with an optional 'to') is required")
        source = self.source("from")
        if self.has("to"):
            return source, self.target("to")
        return source, self.check_target("from", source)

    def finish(self) -> None:
        if "comment" in self.raw and not isinstance(self.raw["comment"], str):
            raise self.fail("the field 'comment' must be a string")
        unknown = sorted(str(k) for k in self.raw if k not in self.used)
        if unknown:
            op = self.raw.get("op")
            raise self.fail(f"unknown field(s) for op '{op}': {', '.join(unknown)}")


def _parse_template(f: _Fields) -> tuple[tuple[bool, str], ...]:
    text = f.text("template", max_chars=MAX_TEMPLATE_CHARS)
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "{}" and text[i + 1 : i + 2] == c:
            literal.append(c)
            i += 2
        elif c == "{":
            close = text.find("}", i)
            name = text[i + 1 : close] if close > 0 else ""
            if close < 0 or not name or "{" in name:
                raise f.fail(
                    "the template has a '{' without a claim name and a closing '}' (write '{{' for '{')"
                )
            if len(name) > MAX_NAME_CHARS:
                raise f.fail(f"a claim name in the template is longer than {MAX_NAME_CHARS} characters")
            if literal:
                parts.append((False, "".join(literal)))
                literal = []
            parts.append((True, name))
            i = close + 1
        elif c == "}":
            raise f.fail("the template has a '}' without a matching '{' (write '}}' for '}')")
        else:
            literal.append(c)
            i += 1
    if literal:
        parts.append((False, "".join(literal)))
    if sum(1 for is_placeholder, _ in parts if is_placeholder) > MAX_PLACEHOLDERS:
        raise f.fail(f"the template has more than {MAX_PLACEHOLDERS} placeholders")
    return tuple(parts)


def _parse_replacement(f: _Fields, groups: int) -> tuple[str | int, ...]:
    text = f.text("replacement", max_chars=MAX_REPLACEMENT_CHARS, allow_empty=True)
    parts: list[str | int] = []
    for m in _REPLACEMENT_PART.finditer(text):
        escape, plain, bad = m.group(1), m.group(2), m.group(3)
        if plain is not None:
            parts.append(plain)
        elif escape == "\\":
            parts.append("\\")
        elif escape is not None:
            number = int(escape)
            if number > groups:
                raise f.fail(f"the replacement refers to group {number}, but the pattern has {groups}")
            parts.append(number)
        else:
            raise f.fail(
                f"the replacement has an unknown escape {bad!r}: "
                "use \\0..\\9 for groups and \\\\ for a backslash"
            )
    return tuple(parts)


def _copy(f: _Fields, **common: Any) -> Rule:
    source, target = f.source("from"), f.target("to")
    return Copy(source=source, target=target, remove_source=f.flag("remove_source"), **common)


def _rename(f: _Fields, **common: Any) -> Rule:
    return Copy(source=f.source("from"), target=f.target("to"), remove_source=True, **common)


def _first_of(f: _Fields, **common: Any) -> Rule:
    return FirstOf(sources=f.names("from"), target=f.target("to"), **common)


def _template(f: _Fields, **common: Any) -> Rule:
    return Template(target=f.target("to"), parts=_parse_template(f), **common)


def _simple(cls: type[Transform]) -> Callable[..., Rule]:
    def build(f: _Fields, **common: Any) -> Rule:
        source, target = f.source_and_target()
        return cls(source=source, target=target, **common)

    return build


def _regex_extract(f: _Fields, **common: Any) -> Rule:
    source, target = f.source_and_target()
    pattern = f.pattern()
    if pattern.groups < 1:
        raise f.fail("the field 'pattern' needs a group: the first group is what is extracted")
    return RegexExtract(source=source, target=target, pattern=pattern, **common)


def _regex_replace(f: _Fields, **common: Any) -> Rule:
    source, target = f.source_and_target()
    pattern = f.pattern()
    replacement = _parse_replacement(f, pattern.groups)
    return RegexReplace(source=source, target=target, pattern=pattern, replacement=replacement, **common)


def _split(f: _Fields, **common: Any) -> Rule:
    source, target = f.source_and_target()
    separator = f.text("separator", max_chars=MAX_SEPARATOR_CHARS)
    return Split(source=source, target=target, separator=separator, **common)


def _join(f: _Fields, **common: Any) -> Rule:
    source, target = f.source_and_target()
    separator = f.text("separator", max_chars=MAX_SEPARATOR_CHARS, allow_empty=True)
    return Join(source=source, target=target, separator=separator, **common)


def _map_values(f: _Fields, **common: Any) -> Rule:
    source, target = f.source_and_target()
    return MapValues(
        source=source,
        target=target,
        table=f.table("table"),
        default=f.values("default", required=False),
        keep_unmapped=f.flag("keep_unmapped"),
        **common,
    )


def _filter(f: _Fields, **common: Any) -> Rule:
    source, target = f.source_and_target()
    return Filter(source=source, target=target, pattern=f.pattern(), invert=f.flag("invert"), **common)


def _constant(f: _Fields, **common: Any) -> Rule:
    return Constant(claim=f.target("claim"), value=f.values("value"), **common)


def _default(f: _Fields, **common: Any) -> Rule:
    return Default(claim=f.target("claim"), value=f.values("value"), **common)


def _require(f: _Fields, **common: Any) -> Rule:
    return Require(claim=f.source("claim"), **common)


def _drop(f: _Fields, **common: Any) -> Rule:
    return Drop(claim=f.source("claim"), **common)


OPS: Mapping[str, Callable[..., Rule]] = {
    "copy": _copy,
    "rename": _rename,
    "first_of": _first_of,
    "template": _template,
    "lowercase": _simple(Lowercase),
    "trim": _simple(Trim),
    "normalize_email": _simple(NormalizeEmail),
    "regex_extract": _regex_extract,
    "regex_replace": _regex_replace,
    "split": _split,
    "join": _join,
    "map_values": _map_values,
    "filter": _filter,
    "constant": _constant,
    "default": _default,
    "require": _require,
    "drop": _drop,
}


def compile_rule(index: int, raw: object) -> Rule:
    """Validate one rule's JSON and compile it; raise RuleError(index, ...) if it cannot be used."""
    if not isinstance(raw, dict):
        raise RuleError(index, "a rule must be a JSON object with an 'op'")
    op = raw.get("op")
    if not isinstance(op, str):
        raise RuleError(index, "the field 'op' is required and must be a string")
    build = OPS.get(op)
    if build is None:
        raise RuleError(index, f"unknown op {op!r}; the ops are: {', '.join(OPS)}")
    fields = _Fields(index, raw)
    rule = build(fields, index=index, spec=copy.deepcopy(raw))
    fields.finish()
    return rule


def compile_rules(raw_rules: object) -> tuple[Rule, ...]:
    """Compile a connection's rule list (a JSON array); RuleError names the first bad rule."""
    if isinstance(raw_rules, (str, bytes, Mapping)) or not isinstance(raw_rules, (list, tuple)):
        raise RuleError(-1, "the mapping rules must be a JSON array of rule objects")
    if len(raw_rules) > MAX_RULES:
        raise RuleError(-1, f"a mapping may have at most {MAX_RULES} rules")
    return tuple(compile_rule(i, raw) for i, raw in enumerate(raw_rules))
