"""Fixtures of the reliability suite: the adapter under test (every name in
``conformance.servers.SERVERS``, read when the tests are collected), one shared server per
adapter for the tests that need no special options, and the test media."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conformance.servers import SERVERS, capabilities, running_server

from meetstream_live import Disconnected, Event
from meetstream_live.adapters import ConnectionInfo, Handler, HandlerFactory


def is_asgi(adapter: str) -> bool:
    """True for the servers that parse HTTP and frame WebSockets themselves (not the core)."""
    return not capabilities(adapter).delivers_partial_frames


@pytest.fixture(scope="module", params=sorted(SERVERS))
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class _Tracked(Handler):
    """A handler that tells its :class:`Switch` when its connection is over."""

    def __init__(self, inner: Handler, switch: Switch) -> None:
        self.inner = inner
        self.switch = switch

    def dispatch(self, events: Iterable[Event]) -> None:
        events = list(events)
        try:
            self.inner.dispatch(events)
        finally:
            if any(isinstance(e, Disconnected) for e in events):
                with self.switch.cond:
                    self.switch.finished += 1
                    self.switch.cond.notify_all()


@dataclass
class Switch:
    """The factory of a shared server: each test plugs in its own (``use``) and waits for its
    connections to be over (``wait``)."""

    port: int = 0
    factory: HandlerFactory | None = None
    finished: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, info: ConnectionInfo) -> Handler:
        assert self.factory is not None, "call use() first"
        return _Tracked(self.factory(info), self)

    def use(self, factory: HandlerFactory) -> int:
        with self.cond:
            self.factory = factory
            self.finished = 0
        return self.port

    def wait(self, count: int = 1, timeout: float = 20.0) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.finished >= count, timeout)
        assert ok, f"{self.finished}/{count} connections over in {timeout} s"


@pytest.fixture(scope="module")
def shared(adapter: str) -> Iterator[Switch]:
    switch = Switch()
    with running_server(adapter, switch) as port:
        switch.port = port
        yield switch


@pytest.fixture
def media(fmp4_small: Any) -> bytes:
    return bytes(fmp4_small.data)
