"""Start-up work done once, before the first stream: the socket servers load the core's unmasker
(numpy, when installed) as they start, and the command keeps numpy's OpenBLAS to one thread
unless told otherwise."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import pytest
import trio

from meetstream_live import _mask, unmask_backend
from meetstream_live.adapters import Handler, ServerOptions
from meetstream_live.adapters.asyncio import AsyncioServer
from meetstream_live.adapters.cli import main
from meetstream_live.adapters.sync import SyncServer
from meetstream_live.adapters.trio import TrioServer


def factory(info: object) -> Handler:
    return Handler()


def start_asyncio() -> None:
    async def go() -> None:
        server = AsyncioServer(factory, ServerOptions(drain_timeout=1.0))
        await server.start("127.0.0.1", 0)
        await server.shutdown()

    asyncio.run(go())


def start_sync() -> None:
    server = SyncServer(factory, ServerOptions(drain_timeout=1.0))
    server.start("127.0.0.1", 0)
    server.shutdown()


def start_trio() -> None:
    async def go() -> None:
        server = TrioServer(factory, ServerOptions(drain_timeout=1.0))
        await server.start("127.0.0.1", 0)
        await server.shutdown()

    trio.run(go)


@pytest.mark.parametrize(
    ("adapter", "start"), [("asyncio", start_asyncio), ("sync", start_sync), ("trio", start_trio)]
)
def test_a_started_server_has_loaded_the_unmasker(
    adapter: str,
    start: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _mask._numpy.cache_clear()  # as in a fresh process: nothing loaded yet
    caplog.set_level(logging.DEBUG, logger="meetstream_live")
    start()
    assert _mask._numpy.cache_info().currsize, "the server started without loading numpy"
    backend = unmask_backend()
    messages = [r.getMessage() for r in caplog.records if r.name == "meetstream_live"]
    assert f"{adapter} server: unmasking with {backend}" in messages


def test_cli_keeps_openblas_to_one_thread_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "unset")  # recorded: restored after the test
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    assert main(["simulate", "http://example.com/"]) == 2  # any command; a quick usage error
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"


def test_cli_leaves_an_explicit_openblas_setting_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    assert main(["simulate", "http://example.com/"]) == 2
    assert os.environ["OPENBLAS_NUM_THREADS"] == "4"
