"""The stable subject: deterministic, scoped to tenant + connection, opaque (never the email)."""

from __future__ import annotations

from broker.claims.pipeline import apply
from broker.claims.subject import derive_sub, pairwise_sub
from tests.claims.helpers import EMAIL, WHERE, identity, mapping

ALICE = identity({"email": ["alice@example.com"]}, subject="alice@example.com", subject_format=EMAIL)


def sub(**where: str) -> str:
    return apply(mapping([], "okta"), ALICE, **{**WHERE, **where}).sub


def test_same_inputs_same_sub() -> None:
    assert sub() == sub()
    assert sub(tenant="renamed", connection="renamed-too") == sub()  # ids, not slugs


def test_other_tenant_or_connection_other_sub() -> None:
    assert len({sub(), sub(tenant_id="ten-2"), sub(connection_id="con-2")}) == 3


def test_never_contains_the_email() -> None:
    s = sub()
    assert "alice" not in s and "example" not in s and "@" not in s
    assert len(s) == 52 and s.isalnum() and s == s.lower()


def test_length_prefixing_prevents_ambiguous_concatenation() -> None:
    assert derive_sub("ab", "c", "d") != derive_sub("a", "bc", "d")
    assert derive_sub("t", "c", "x\ud800") != derive_sub("t", "c", "x")  # lone surrogates hash, never crash


def test_pairwise_sub_per_app() -> None:
    s = sub()
    assert pairwise_sub(s, "app-1") == pairwise_sub(s, "app-1")
    assert pairwise_sub(s, "app-1") != pairwise_sub(s, "app-2") != s
