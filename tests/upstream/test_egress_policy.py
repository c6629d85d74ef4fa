"""Upstream fetches (metadata_url, OIDC discovery/JWKS/token) reach only public addresses unless allowed:
tenant admins choose those URLs, so an internal address would be server-side request forgery."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from broker.settings import load_settings
from broker.upstream.sources import FetchError, RequestsFetcher, is_public_address
from tests.support.broker_server import free_port


@pytest.fixture
def local_server() -> Iterator[str]:
    port = free_port()
    server = make_server("127.0.0.1", port, lambda env, start: Response("<ok/>")(env, start), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/metadata"
    server.shutdown()
    thread.join(timeout=5)


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                "::1", "fd00::1", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1", "bogus"])
def test_internal_addresses_are_not_public(ip: str) -> None:
    assert not is_public_address(ip)


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_public(ip: str) -> None:
    assert is_public_address(ip)


def test_fetch_to_loopback_refused_under_the_egress_policy(local_server: str) -> None:
    with pytest.raises(FetchError) as exc:
        RequestsFetcher(allow_private=False).get(local_server, timeout=5, max_bytes=1000)
    assert "not a public address" in (exc.value.detail or "")


def test_hostname_resolving_to_loopback_refused_too(local_server: str) -> None:
    with pytest.raises(FetchError):
        RequestsFetcher(allow_private=False).get(local_server.replace("127.0.0.1", "localhost"), timeout=5,
                                                 max_bytes=1000)


def test_fetch_to_loopback_allowed_when_configured(local_server: str) -> None:
    result = RequestsFetcher(allow_private=True).get(local_server, timeout=5, max_bytes=1000)
    assert result.status == 200 and result.body == b"<ok/>"


def test_policy_defaults_by_environment() -> None:
    assert load_settings({}).upstream_allow_private is True
    prod = load_settings({"BROKER_ENV": "production", "BROKER_SECRET_KEY": "s" * 40,
                          "BROKER_PUBLIC_URL": "https://sso.example.com"})
    assert prod.upstream_allow_private is False
    assert load_settings({"BROKER_ENV": "production", "BROKER_SECRET_KEY": "s" * 40,
                          "BROKER_PUBLIC_URL": "https://sso.example.com",
                          "BROKER_UPSTREAM_ALLOW_PRIVATE": "true"}).upstream_allow_private is True
