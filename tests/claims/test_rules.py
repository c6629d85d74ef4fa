"""Each rule kind, as the admin writes it; the SPEC's examples verbatim."""

from __future__ import annotations

import pytest

from broker.claims.pipeline import MappingError
from tests.claims.helpers import dry, identity, run

# The generic-saml preset runs first; it maps only mail/email, givenName, sn, displayName/cn, isMemberOf.


def test_spec_copy_example_exposes_the_attribute_as_an_extra_claim() -> None:
    p = run([{"op": "copy", "from": "department", "to": "department"}], identity({"department": ["Sales"]}))
    assert p.extra == {"department": "Sales"}


def test_spec_map_values_example() -> None:
    rule = {
        "op": "map_values",
        "from": "groups",
        "to": "roles",
        "table": {"Admins": "admin"},
        "default": "member",
    }
    copy_groups = {"op": "copy", "from": "grp", "to": "groups"}
    admin = run([copy_groups, rule], identity({"grp": ["Everyone", "Admins"]}))
    assert admin.roles == ("admin",)
    assert admin.groups == ("Everyone", "Admins")
    assert run([copy_groups, rule], identity({"grp": ["Everyone"]})).roles == ("member",)
    assert run([rule], identity({})).roles == ("member",)  # the default also applies when groups are absent


def test_spec_require_example_refuses_the_login_naming_claim_and_connection() -> None:
    with pytest.raises(MappingError) as err:
        run([{"op": "require", "claim": "email"}], identity({"x": ["1"]}))
    assert err.value.code == "mapping_required_claim_missing"
    assert "'email'" in err.value.message and "'corp-idp'" in err.value.message
    assert err.value.details["claim"] == "email"


def test_copy_with_remove_source_and_rename() -> None:
    ex = dry(
        [
            {"op": "copy", "from": "a", "to": "b", "remove_source": True},
            {"op": "rename", "from": "c", "to": "d"},
            {"op": "copy", "from": "absent", "to": "e"},
        ],
        identity({"a": ["1"], "c": ["2", "3"]}),
    )
    assert ex.profile is not None
    assert ex.profile.extra == {"b": "1", "d": ["2", "3"]}
    assert [s.changed for s in ex.steps if s.source == "rule"] == [
        {"a": (["1"], None), "b": (None, ["1"])},
        {"c": (["2", "3"], None), "d": (None, ["2", "3"])},
        {},  # the connection's own rules are always listed; this one found nothing to copy
    ]


def test_copy_resolves_friendly_names_after_exact_names() -> None:
    oid = "urn:oid:2.5.4.11"
    ident = identity({oid: ["Research"]}, friendly_names={"ou": oid})
    assert run([{"op": "copy", "from": "ou", "to": "department"}], ident).extra == {"department": "Research"}


def test_first_of_takes_the_first_present_source() -> None:
    rule = {"op": "first_of", "from": ["mail", "email", "upn"], "to": "contact"}
    assert run([rule], identity({"upn": ["u@x.org"], "email": ["e@x.org"]})).extra == {"contact": "e@x.org"}
    assert run([rule], identity({"other": ["1"]})).extra == {}


def test_scratch_claims_never_reach_the_profile() -> None:
    rules = [{"op": "copy", "from": "a", "to": "_tmp"}, {"op": "copy", "from": "_tmp", "to": "b"}]
    assert run(rules, identity({"a": ["1"]})).extra == {"b": "1"}


def test_template_substitutes_claim_values_only() -> None:
    rule = {"op": "template", "to": "name", "template": "{given_name} {family_name}"}
    rules = [
        {"op": "copy", "from": "gn", "to": "given_name"},
        {"op": "copy", "from": "fn", "to": "family_name"},
        rule,
    ]
    assert run(rules, identity({"gn": ["Ada"], "fn": ["Lovelace"]})).name == "Ada Lovelace"
    assert run(rules, identity({"fn": ["Lovelace"]})).name == "Lovelace"
    # format-spec and attribute tricks are just (absent) claim names, never evaluated
    tricky = {"op": "template", "to": "label", "template": "{{x}} {gn.__class__} {gn!r} {gn:>10} {gn}"}
    assert run([tricky], identity({"gn": ["Ada"]})).extra == {"label": "{x}    Ada"}
    nothing = {"op": "template", "to": "label", "template": "Hi {missing}"}
    assert run([nothing], identity({"gn": ["Ada"]})).extra == {}


def test_lowercase_and_trim() -> None:
    p = run(
        [
            {"op": "trim", "claim": "dept"},
            {"op": "lowercase", "from": "dept", "to": "dept_lc"},
        ],
        identity({"dept": ["  Sales ", "   "]}),
    )
    assert p.extra == {"dept": "Sales", "dept_lc": "sales"}


def test_normalize_email_trims_lowercases_and_drops_non_addresses() -> None:
    p = run(
        [{"op": "copy", "from": "m", "to": "email"}, {"op": "normalize_email", "claim": "email"}],
        identity({"m": [" not an email ", " Ada@Example.ORG "]}),
    )
    assert p.email == "ada@example.org"
    assert any("not an email address" in w for w in p.warnings)
    only_bad = run(
        [{"op": "copy", "from": "m", "to": "email"}, {"op": "normalize_email", "claim": "email"}],
        identity({"m": ["a@b@c"]}),
    )
    assert only_bad.email is None


def test_regex_extract_takes_the_first_group() -> None:
    rule = {"op": "regex_extract", "from": "upn", "to": "username", "pattern": "^([^@]+)@"}
    assert run([rule], identity({"upn": ["ada@corp.example", "no-at-sign"]})).extra == {"username": "ada"}


def test_regex_replace_with_group_references() -> None:
    rule = {
        "op": "regex_replace",
        "claim": "dn",
        "pattern": "^CN=([^,]+),.*$",
        "replacement": "cn:\\1 \\\\",
    }
    assert run([rule], identity({"dn": ["CN=Admins,OU=Groups,DC=corp"]})).extra == {"dn": "cn:Admins \\"}


def test_split_trims_parts_and_drops_empty_ones() -> None:
    rule = {"op": "split", "from": "memberOf", "to": "groups", "separator": ","}
    assert run([rule], identity({"memberOf": ["red, green,,blue"]})).groups == ("red", "green", "blue")


def test_join() -> None:
    rule = {"op": "join", "from": "ou", "to": "path", "separator": "/"}
    assert run([rule], identity({"ou": ["a", "b", "c"]})).extra == {"path": "a/b/c"}


def test_map_values_keep_unmapped_and_list_values() -> None:
    rule = {
        "op": "map_values",
        "claim": "groups",
        "table": {"Admins": ["admin", "auditor"], "Ops": "operator"},
        "keep_unmapped": True,
    }
    p = run(
        [{"op": "copy", "from": "g", "to": "groups"}, rule], identity({"g": ["Admins", "Other", "Admins"]})
    )
    assert p.groups == ("admin", "auditor", "Other")


def test_map_values_without_default_or_match_empties_the_target() -> None:
    rule = {"op": "map_values", "from": "g", "to": "roles", "table": {"Admins": "admin"}}
    assert (
        run([{"op": "constant", "claim": "roles", "value": "x"}, rule], identity({"g": ["Users"]})).roles
        == ()
    )


def test_filter_keeps_matching_values_or_the_others() -> None:
    keep = {"op": "filter", "from": "g", "to": "groups", "pattern": "^app-", "ignore_case": True}
    drop = {"op": "filter", "from": "g", "to": "roles", "pattern": "^app-", "invert": True}
    p = run([keep, drop], identity({"g": ["app-one", "APP-two", "other"]}))
    assert p.groups == ("app-one", "APP-two")
    assert p.roles == ("APP-two", "other")


def test_constant_and_default() -> None:
    rules = [
        {"op": "constant", "claim": "roles", "value": ["user", "viewer"]},
        {"op": "default", "claim": "roles", "value": "ignored"},
        {"op": "default", "claim": "plan", "value": "free"},
        {"op": "constant", "claim": "email_verified", "value": False},
        {"op": "constant", "claim": "email", "value": "a@b.example"},
    ]
    p = run(rules, identity({}))
    assert p.roles == ("user", "viewer")
    assert p.extra == {"plan": "free"}
    assert p.email_verified is False


def test_drop() -> None:
    rules = [{"op": "copy", "from": "d", "to": "department"}, {"op": "drop", "claim": "department"}]
    assert run(rules, identity({"d": ["x"]})).extra == {}


def test_unmapped_raw_attributes_never_reach_the_profile() -> None:
    p = run(
        [], identity({"roles": ["superadmin"], "groups": ["g"], "department": ["x"], "email_verified": ["1"]})
    )
    assert (p.roles, p.groups, p.extra) == ((), (), {})


def test_name_falls_back_to_given_and_family() -> None:
    rules = [
        {"op": "copy", "from": "g", "to": "given_name"},
        {"op": "copy", "from": "f", "to": "family_name"},
    ]
    assert run(rules, identity({"g": ["Ada"], "f": ["Lovelace"]})).name == "Ada Lovelace"
    assert run(rules, identity({"g": ["Ada"]})).name == "Ada"


def test_explain_reports_the_failing_require_after_the_steps_before_it() -> None:
    ex = dry(
        [{"op": "copy", "from": "d", "to": "dept"}, {"op": "require", "claim": "email"}],
        identity({"d": ["x"]}),
    )
    assert ex.profile is None and ex.error is not None
    assert ex.error.code == "mapping_required_claim_missing"
    assert ex.steps[-1].rule == {"op": "copy", "from": "d", "to": "dept"}
    assert ex.raw["d"] == ["x"] and ex.raw["nameid"] == ["user-1"]


def test_regex_ops_skip_values_longer_than_the_cap() -> None:
    huge = "a" * 5000
    rule = {"op": "filter", "from": "g", "to": "groups", "pattern": "a"}
    p = run([rule], identity({"g": [huge, "abc"]}))
    assert p.groups == ("abc",)
    assert any("longer than 4096" in w for w in p.warnings)
