"""DatabaseGeneration: without Redis the generation token is a database row, so that processes sharing only
the database (a server and `broker config apply` beside it) see each other's configuration writes."""

from __future__ import annotations

from sqlalchemy import Engine

from broker.store.config_repo import SqlConfigStore
from broker.store.database import make_engine
from broker.store.generation import DatabaseGeneration, StateGeneration, generation_for
from broker.store.sealing import Sealer
from broker.store.state import MemoryStateStore


def test_without_redis_the_token_is_in_the_database(engine: Engine, database_url: str) -> None:
    other_engine = make_engine(database_url)
    try:
        mine = generation_for(MemoryStateStore(), SqlConfigStore(engine, Sealer("s" * 40)))
        other = generation_for(MemoryStateStore(), SqlConfigStore(other_engine, Sealer("s" * 40)))
        assert isinstance(mine, DatabaseGeneration) and isinstance(other, DatabaseGeneration)
        assert isinstance(generation_for(MemoryStateStore()), StateGeneration), "no database: the state store"
        assert mine.current() is None
        first, _ = other.poll()
        assert other.poll() == (first, frozenset()), "nothing changed"
        mine.bump(frozenset({"t:acme"}))
        token, changed = other.poll()
        assert token is not None and token == mine.current()
        assert changed is None, "a token alone cannot say what changed: everything"
        assert other.poll() == (token, frozenset())
        mine.bump()
        assert other.poll()[0] not in (None, token)
    finally:
        other_engine.dispose()
