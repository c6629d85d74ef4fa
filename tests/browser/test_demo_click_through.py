"""The README's demo, clicked through in real headless Chromium: `broker demo` in a temporary directory,
/demo -> "Sign in with SAML" -> the development IdP's login page (email, name, groups) -> back on /demo with
the normalized profile, the decoded ID token and the raw upstream attributes; then the same over OIDC.
Screenshots for the README go to docs/screenshots/demo-*.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.flows.test_demo import Demo, start_demo, stop_demo
from tests.support.broker_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    running = start_demo(tmp_path_factory.mktemp("demo-browser"), free_port())
    try:
        yield running
    finally:
        stop_demo(running)


def _problems(page: Any) -> list[str]:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


def _sign_in_at_dev_idp(page: Any, email: str, name: str, groups: tuple[str, ...]) -> None:
    page.wait_for_url(re.compile(r".*/dev/idp/login\?req=.*"))
    page.fill("#email", email)
    page.fill("#name", name)
    for group in ("Everyone", "Engineering", "Admins"):
        box = f"#group-{group.lower()}"
        page.check(box) if group in groups else page.uncheck(box)


def test_click_through_the_demo_with_saml_and_oidc(page: Any, demo: Demo, screenshot: Any) -> None:
    from playwright.sync_api import expect

    problems = _problems(page)
    page.goto(f"{demo.url}/demo")
    expect(page.locator("h1")).to_have_text("Federation broker demo")
    screenshot(page, "demo-home")

    # SAML: the broker sends an AuthnRequest to the dev IdP; its signed Response comes back by HTTP-POST
    page.click("#signin-saml")
    _sign_in_at_dev_idp(page, "grace@example.com", "Grace Hopper", ("Everyone", "Admins"))
    expect(page.locator("body")).to_contain_text("SAML sign-in for demo/dev-saml")
    screenshot(page, "demo-dev-idp-login")
    page.click("#sign-in")
    page.wait_for_url(re.compile(r".*/demo/result/[^/]+$"))
    expect(page.locator(".ok")).to_contain_text("dev-saml")
    profile = page.locator("#profile")
    expect(profile).to_contain_text("grace@example.com")
    expect(profile).to_contain_text("Grace Hopper")
    expect(profile.locator("tr", has_text="roles")).to_contain_text("admin")
    expect(page.locator("#id-token-header")).to_contain_text('"alg": "RS256"')
    expect(page.locator("#id-token-claims")).to_contain_text('"aud": "demo-app"')
    raw = page.locator("#raw-attributes")
    expect(raw).to_contain_text("firstName")
    expect(raw).to_contain_text("displayName")
    expect(raw.locator("tr", has_text="groups")).to_contain_text("Everyone, Admins")
    screenshot(page, "demo-saml-result")

    # OIDC: the broker is the RP of the dev OP (discovery, PKCE, client_secret_basic, JWKS, userinfo)
    page.click("#signin-oidc")
    _sign_in_at_dev_idp(page, "linus@example.org", "Linus Torvalds", ("Engineering",))
    expect(page.locator("body")).to_contain_text("OpenID Connect sign-in for demo/dev-oidc")
    page.click("#sign-in")
    page.wait_for_url(re.compile(r".*/demo/result/[^/]+$"))
    expect(page.locator(".ok")).to_contain_text("dev-oidc")
    expect(page.locator("#profile").locator("tr", has_text="roles")).to_contain_text("developer")
    expect(page.locator("#id-token-claims")).to_contain_text(f'"idp": "{demo.url}/dev/idp/oidc"')
    raw = page.locator("#raw-attributes")
    expect(raw).to_contain_text("email_verified")
    expect(raw.locator("tr", has_text="groups")).to_contain_text("Engineering")
    screenshot(page, "demo-oidc-result")
    assert problems == [], problems
