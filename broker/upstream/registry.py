"""Opens the connector of a connection, cached by (connection id, version, metadata generation).

Opening is also validation: a connection whose settings or metadata cannot be used fails here, with a
LoginError the web layer shows as a clear page. Connectors hold only per-connection trust material;
nothing per login.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from broker.errors import LoginError, ValidationFailed
from broker.metrics import Metrics
from broker.model import Connection
from broker.ports import Clock, Fetcher, StateStore
from broker.samlxml.errors import SamlError
from broker.samlxml.metadata import IdpMetadata, parse_idp_metadata
from broker.upstream.base import Connector
from broker.upstream.oidc import OidcConnector
from broker.upstream.saml import SamlConnector, parse_saml_settings

# Given a connection with a metadata_url, returns (document bytes or None, generation marker).
MetadataProvider = Callable[[Connection], tuple[bytes | None, str]]


class ConnectorRegistry:
    def __init__(
        self,
        *,
        public_url: str,
        state: StateStore,
        clock: Clock,
        fetcher: Fetcher,
        metadata_provider: MetadataProvider | None = None,
        max_entries: int = 20_000,
        metrics: Metrics | None = None,
        upstream_timeout: float = 10.0,
    ) -> None:
        self.metrics = metrics
        self.upstream_timeout = upstream_timeout
        self.public_url = public_url
        self.state = state
        self.clock = clock
        self.fetcher = fetcher
        self.metadata_provider = metadata_provider
        self._cache: OrderedDict[tuple[str, int, str], Connector] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    def _parse(self, connection: Connection, raw: bytes | None) -> IdpMetadata | None:
        if raw is None:
            return None
        try:
            meta = parse_idp_metadata(raw, entity_id=connection.settings.get("idp_entity_id") or None,
                                      now=datetime.fromtimestamp(self.clock.now(), UTC))
        except SamlError as exc:
            raise LoginError("This connection's IdP metadata cannot be used.", code="saml_connection_not_ready",
                             detail=exc.message) from None
        return meta

    def open(self, connection: Connection) -> Connector:
        generation = ""
        fetched: bytes | None = None
        saml = connection.protocol == "saml"
        # Read raw (stored settings were validated when saved); parsed below only to build a connector.
        from_url = saml and bool(connection.settings.get("metadata_url")) and not connection.settings.get(
            "metadata_xml")
        if from_url and self.metadata_provider is not None:
            fetched, generation = self.metadata_provider(connection)
        key = (connection.id, connection.version, generation)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        try:
            connector = self._build(connection, saml, from_url, fetched)
        except ValidationFailed as exc:
            # Stored settings that no longer validate (saved by an earlier version, say): a refused login with
            # a reason the audit names, not an error page without one.
            raise LoginError("This connection's settings cannot be used; its administrator must correct them.",
                             code="connection_not_ready", detail=exc.message) from None
        with self._lock:
            for stale in [k for k in self._cache if k[0] == connection.id and k != key]:
                del self._cache[stale]
            self._cache[key] = connector
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return connector

    def _build(self, connection: Connection, saml: bool, from_url: bool, fetched: bytes | None) -> Connector:
        connector: Connector
        if saml:
            settings = parse_saml_settings(connection.settings)
            raw = fetched if from_url else (settings.metadata_xml.encode() if settings.metadata_xml else None)
            idp = self._parse(connection, raw)
            connector = SamlConnector(connection, public_url=self.public_url, idp=idp, state=self.state,
                                      clock=self.clock)
        else:
            if "timeout" not in connection.settings:  # BROKER_UPSTREAM_TIMEOUT unless the connection sets one
                connection = replace(connection, settings={**connection.settings, "timeout": self.upstream_timeout})
            connector = OidcConnector(connection, public_url=self.public_url, fetcher=self.fetcher,
                                      state=self.state, clock=self.clock)
        return connector
