"""Property: whatever the upstream sends, a mapping that compiled fails at login only with MappingError."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.claims.pipeline import MappingError, apply, compile_mapping, explain
from broker.claims.presets import PRESET_NAMES
from broker.claims.rules import OPS, RuleError, compile_rule
from broker.model import MappingConfig, Profile, UpstreamIdentity

ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
NAMES = st.one_of(
    st.sampled_from(
        [
            "email",
            "groups",
            "roles",
            "name",
            "given_name",
            "nameid",
            "mail",
            "memberOf",
            "dept",
            "_tmp",
            "x",
            "",
        ]
    ),
    ANY_TEXT,
)
VALUE = st.one_of(ANY_TEXT, st.just(""), st.text(min_size=4000, max_size=70000).map(lambda s: s or "a"))
PATTERNS = st.sampled_from(["^([^@]+)@", "(a+)+", "([", "(.)", "\\s+", "^(.*)$", "x", "", "(?i)^adm(in)?$"])
FIELD_VALUES: st.SearchStrategy[Any] = st.one_of(
    NAMES,
    st.lists(NAMES, max_size=4),
    st.booleans(),
    st.none(),
    st.integers(),
    st.dictionaries(NAMES, st.one_of(NAMES, st.lists(NAMES, max_size=3)), max_size=4),
    PATTERNS,
    st.sampled_from(["{given_name} {family_name}", "{{x}}", "\\1-\\0", ",", ""]),
)
FIELDS = [
    "from", "to", "claim", "template", "pattern", "replacement", "separator", "table", "default", "value",
    "remove_source", "ignore_case", "invert", "keep_unmapped", "comment",
]  # fmt: skip

RULE = st.builds(
    lambda op, fields: {"op": op, **fields},
    st.sampled_from(sorted(OPS)),
    st.dictionaries(st.sampled_from(FIELDS), FIELD_VALUES, max_size=5),
)

TARGETS = st.sampled_from(
    ["email", "email_verified", "groups", "roles", "name", "given_name", "dept", "_tmp", "x"]
)
GOOD_PATTERNS = st.sampled_from(["^([^@]+)@", "(.)", "\\s+", "^(.*)$", "(x)", "(?i)^adm(in)?$", "@(.+)$"])
LITERALS = st.one_of(
    ANY_TEXT.filter(bool), st.lists(ANY_TEXT.filter(bool), min_size=1, max_size=3), st.booleans()
)
IO = st.one_of(
    st.fixed_dictionaries({"claim": TARGETS}),
    st.fixed_dictionaries({"from": NAMES.filter(bool)}, optional={"to": TARGETS}),
)


def _op(op: str, *parts: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    def merge(*dicts: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"op": op}
        for d in dicts:
            out.update(d)
        return out

    return st.tuples(*parts).map(lambda ds: merge(*ds)) if parts else st.just({"op": op})


def _f(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(fields)


VALID_RULE = st.one_of(
    _op("copy", _f(**{"from": NAMES.filter(bool), "to": TARGETS, "remove_source": st.booleans()})),
    _op("rename", _f(**{"from": NAMES.filter(bool), "to": TARGETS})),
    _op("first_of", _f(**{"from": st.lists(NAMES.filter(bool), min_size=1, max_size=4), "to": TARGETS})),
    _op(
        "template",
        _f(to=TARGETS, template=st.sampled_from(["{given_name} {family_name}", "{{{x}}}", "a{nameid}"])),
    ),
    _op("lowercase", IO),
    _op("trim", IO),
    _op("normalize_email", IO),
    _op("regex_extract", IO, _f(pattern=GOOD_PATTERNS, ignore_case=st.booleans())),
    _op(
        "regex_replace",
        IO,
        _f(pattern=GOOD_PATTERNS, replacement=st.sampled_from(["", "\\1", "<\\0>", "\\\\"])),
    ),
    _op("split", IO, _f(separator=st.sampled_from([",", ";", " ", "::"]))),
    _op("join", IO, _f(separator=st.sampled_from([",", "", " "]))),
    _op(
        "map_values",
        IO,
        _f(
            table=st.dictionaries(
                ANY_TEXT,
                st.one_of(ANY_TEXT.filter(bool), st.lists(ANY_TEXT.filter(bool), min_size=1)),
                min_size=1,
                max_size=4,
            ),
            default=st.one_of(st.none(), LITERALS),
            keep_unmapped=st.booleans(),
        ),
    ),
    _op("filter", IO, _f(pattern=GOOD_PATTERNS, invert=st.booleans())),
    _op("constant", _f(claim=TARGETS, value=LITERALS)),
    _op("default", _f(claim=TARGETS, value=LITERALS)),
    _op("require", _f(claim=NAMES.filter(bool))),
    _op("drop", _f(claim=NAMES.filter(bool))),
)

IDENTITY = st.builds(
    UpstreamIdentity,
    protocol=st.sampled_from(["saml", "oidc"]),
    issuer=ANY_TEXT,
    subject=st.one_of(ANY_TEXT, st.just("")),
    subject_format=st.one_of(
        st.none(),
        st.sampled_from(
            [
                "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
                "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
                "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
            ]
        ),
        ANY_TEXT,
    ),
    attributes=st.dictionaries(NAMES, st.lists(VALUE, max_size=5).map(tuple), max_size=8),
    friendly_names=st.dictionaries(NAMES, NAMES, max_size=4),
    warnings=st.lists(ANY_TEXT, max_size=2).map(tuple),
)


def compiled_rules(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept = []
    for rule in raw:
        try:
            compile_rule(0, rule)
        except RuleError:
            continue
        kept.append(rule)
    return kept


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    preset=st.sampled_from(PRESET_NAMES),
    raw_rules=st.lists(st.one_of(VALID_RULE, VALID_RULE, RULE), max_size=10),
    ident=IDENTITY,
    subject_source=st.one_of(st.none(), NAMES.filter(bool)),
)
def test_apply_and_explain_raise_only_mapping_error(
    preset: str, raw_rules: list[dict[str, Any]], ident: UpstreamIdentity, subject_source: str | None
) -> None:
    rules = compiled_rules(raw_rules)
    if subject_source is not None and len(subject_source) > 256:
        subject_source = subject_source[:256]
    mapping = compile_mapping(MappingConfig(preset=preset, rules=tuple(rules), subject_source=subject_source))
    where = {"tenant": "t", "tenant_id": "tid", "connection": "c", "connection_id": "cid"}
    try:
        profile = apply(mapping, ident, **where)
    except MappingError:
        profile = None
    ex = explain(mapping, ident, **where)
    assert (ex.profile is None) == (ex.error is not None)
    assert ex.profile == profile
    if profile is not None:
        check_profile(profile)


def check_profile(p: Profile) -> None:
    assert isinstance(p.sub, str) and len(p.sub) == 52
    assert isinstance(p.groups, tuple) and all(isinstance(g, str) and g for g in p.groups)
    assert isinstance(p.roles, tuple) and all(isinstance(r, str) and r for r in p.roles)
    for key, value in p.extra.items():
        assert not key.startswith("_")
        assert isinstance(value, str) or (isinstance(value, list) and len(value) > 1)
    if p.email is None:
        assert p.email_verified is None
