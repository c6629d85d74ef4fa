"""A Fetcher that answers the development IdP's own documents in-process, and passes anything else on.

`broker demo` applies config/demo.yaml before its server listens, but the demo's SAML connection names the
dev IdP's metadata URL, which the admin code fetches to validate it. This serves those bytes (the same the
running server will publish) for exactly that URL; every other URL goes to the real fetcher.
"""

from __future__ import annotations

from broker.devidp import saml
from broker.devidp.keys import DevIdpKeys
from broker.ports import Fetcher, FetchResult


class DevIdpLocalFetcher:
    def __init__(self, inner: Fetcher, keys: DevIdpKeys, public_url: str) -> None:
        self.inner = inner
        self.documents = {saml.entity_id(public_url): saml.metadata_xml(keys, public_url)}

    def get(
        self, url: str, *, timeout: float, max_bytes: int, headers: dict[str, str] | None = None,
    ) -> FetchResult:
        body = self.documents.get(url)
        if body is not None and len(body) <= max_bytes:
            return FetchResult(status=200, body=body, content_type="application/samlmetadata+xml", headers={})
        return self.inner.get(url, timeout=timeout, max_bytes=max_bytes, headers=headers)

    def post_form(self, url: str, data: dict[str, str], *, timeout: float, max_bytes: int,
                  headers: dict[str, str] | None = None) -> FetchResult:
        return self.inner.post_form(url, data, timeout=timeout, max_bytes=max_bytes, headers=headers)
