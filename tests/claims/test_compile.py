"""Bad rules are refused when saved, with the rule's index and a sentence; never at login."""

from __future__ import annotations

from typing import Any

import pytest

from broker.claims.patterns import PatternRefused, compile_pattern
from broker.claims.pipeline import compile_mapping
from broker.claims.rules import RuleError
from broker.errors import ValidationFailed
from broker.model import MappingConfig

GOOD = {"op": "copy", "from": "a", "to": "b"}


def refuse(rule: Any, *, at: int = 1) -> RuleError:
    with pytest.raises(RuleError) as err:
        compile_mapping(MappingConfig(preset="okta", rules=(GOOD, rule)))
    assert err.value.index == at
    assert err.value.code == "invalid_mapping_rule"
    assert err.value.details["index"] == at
    assert err.value.details["reason"]
    return err.value


def test_unknown_op() -> None:
    assert "unknown op 'exec'" in refuse({"op": "exec", "code": "1"}).reason


def test_missing_op_and_not_an_object() -> None:
    refuse({"from": "a", "to": "b"})
    refuse(["copy"])


def test_missing_field() -> None:
    assert "'to' is required" in refuse({"op": "copy", "from": "a"}).reason
    assert "'claim'" in refuse({"op": "require"}).reason


def test_extra_field() -> None:
    assert "unknown field(s)" in refuse({"op": "copy", "from": "a", "to": "b", "eval": "x"}).reason


def test_wrong_types() -> None:
    refuse({"op": "copy", "from": 1, "to": "b"})
    refuse({"op": "copy", "from": "a", "to": "b", "remove_source": "yes"})
    refuse({"op": "first_of", "from": "a", "to": "b"})
    refuse({"op": "map_values", "from": "g", "to": "roles", "table": ["Admins"]})
    refuse({"op": "map_values", "from": "g", "to": "roles", "table": {"A": 1}})
    refuse({"op": "constant", "claim": "x", "value": []})
    refuse({"op": "split", "claim": "x", "separator": ""})
    refuse({"op": "copy", "from": "a", "to": "b", "comment": 3})


def test_bad_regex() -> None:
    assert "not a valid regular expression" in refuse({"op": "filter", "claim": "g", "pattern": "(["}).reason


def test_regex_extract_needs_a_group() -> None:
    assert "group" in refuse({"op": "regex_extract", "claim": "g", "pattern": "^a"}).reason


def test_replacement_group_must_exist_and_escapes_are_closed() -> None:
    refuse({"op": "regex_replace", "claim": "g", "pattern": "(a)", "replacement": "\\2"})
    refuse({"op": "regex_replace", "claim": "g", "pattern": "(a)", "replacement": "\\g<1>"})


def test_template_braces() -> None:
    refuse({"op": "template", "to": "n", "template": "{given_name"})
    refuse({"op": "template", "to": "n", "template": "given}"})
    refuse({"op": "template", "to": "n", "template": "{}"})


def test_reserved_and_malformed_targets() -> None:
    assert "set by the broker" in refuse({"op": "constant", "claim": "sub", "value": "x"}).reason
    refuse({"op": "copy", "from": "a", "to": "tenant"})
    refuse({"op": "copy", "from": "a", "to": "has space"})
    refuse({"op": "lowercase", "claim": "a", "to": "b"})


def test_the_index_is_the_position_in_the_connections_own_list() -> None:
    refuse({"op": "nope"}, at=1)
    with pytest.raises(RuleError) as err:
        compile_mapping(MappingConfig(preset="okta", rules=({"op": "nope"},)))
    assert err.value.index == 0


def test_unknown_preset() -> None:
    with pytest.raises(ValidationFailed) as err:
        compile_mapping(MappingConfig(preset="oktaa"))
    assert err.value.code == "invalid_mapping_preset"


def test_rules_must_be_a_list() -> None:
    with pytest.raises(RuleError) as err:
        compile_mapping(MappingConfig(preset="okta", rules={"op": "copy"}))  # type: ignore[arg-type]
    assert err.value.index == -1


@pytest.mark.parametrize(
    "pattern",
    [
        "(a+)+$",
        "(\\w*)*x",
        "(a|aa)*b",
        "(x{1,5}){2,}",
        "^(?:\\s*\\S+)+$",
        "(a)\\1",
        "(?P<x>a)(?P=x)",
        "(?(1)a|b)",
        "(?x) a + ",
        "[[a]",
        "[a--b]",
        ".*.*x",
        "^a*a*a*x",
        "^\\w*\\w*\\w{0,16}\\w{0,16}x",
        "a" * 300,
    ],
)
def test_catastrophic_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(PatternRefused):
        compile_pattern(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        "^([^@]+)@",
        "@(.+)$",
        "^CN=([^,]+),",
        "\\s+",
        "^(?P<user>[^@]+)@(?P<domain>.+)$",
        "(?i)^admins?$",
        "^\\d{4}-\\d{2}-\\d{2}$",
        "^app-(.*)-admin$",
        "(?:ab)?c",
        "\\{literal\\}",
    ],
)
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    compile_pattern(pattern)
