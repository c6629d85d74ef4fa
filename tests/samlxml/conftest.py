"""Shared fixtures for samlxml tests: a test IdP, an SP encryption key, and expectations builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from broker.samlxml.response import ResponseExpectations

from .idp_fixtures import Idp, make_idp, make_sp_encryption_keypair

ACS = "https://broker.example.test/t/acme/connections/okta/saml/acs"
SP = "https://broker.example.test/t/acme/connections/okta/saml/metadata"
REQUEST_ID = "_req-5f1e2d"
NOW = 1_750_000_000.0


@pytest.fixture
def idp() -> Idp:
    return make_idp("http://www.okta.example.test/exk123")


@pytest.fixture
def attacker() -> Idp:
    """Another key pair: an attacker who knows the IdP's entity ID but not its key."""
    return make_idp("https://attacker.example.test/idp")


@pytest.fixture
def sp_key() -> tuple[bytes, str]:
    return make_sp_encryption_keypair()


@pytest.fixture
def expect(idp: Idp, sp_key: tuple[bytes, str]) -> Callable[..., ResponseExpectations]:
    def build(**overrides: Any) -> ResponseExpectations:
        base = ResponseExpectations(
            idp_entity_id=idp.entity_id,
            sp_entity_id=SP,
            acs_url=ACS,
            idp_certificates=(idp.cert_pem,),
            in_response_to=REQUEST_ID,
            allow_unsolicited=False,
            now=NOW,
            sp_decryption_keys=(sp_key[0],),
        )
        return replace(base, **overrides)

    return build
