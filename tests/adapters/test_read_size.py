"""The adaptive read size every socket adapter uses (``ReadSizer``): small reads for streams
that come in small pieces, big ones for a bot sending flat out, never over
``ServerOptions.read_size``."""

from __future__ import annotations

import os

import pytest
from conformance.servers import Collector, running_server, tls_contexts
from websockets.sync.client import connect

from meetstream_live import Event, MediaChunk
from meetstream_live.adapters import ServerOptions
from meetstream_live.adapters._driver import READ_SIZE_SHRINK_AFTER, READ_SIZE_START, ReadSizer

KIB = 1024
MIB = 1024 * KIB
#: ``read_size`` in the adapters' tests.
READ_SIZE_LIMIT = 256 * KIB


def test_starts_at_64_kib() -> None:
    assert READ_SIZE_START == 64 * KIB
    assert ReadSizer(MIB).size == READ_SIZE_START
    assert ReadSizer(ServerOptions().read_size).size == READ_SIZE_START


def test_grows_while_reads_come_back_full_up_to_the_maximum() -> None:
    sizer = ReadSizer(MIB)
    sizes = []
    for _ in range(6):
        changed = sizer.update(sizer.size)
        sizes.append((changed, sizer.size))
    assert sizes == [
        (True, 128 * KIB),
        (True, 256 * KIB),
        (True, 512 * KIB),
        (True, MIB),
        (False, MIB),  # capped
        (False, MIB),
    ]


def test_cap_that_is_not_a_power_of_two_is_reached_exactly() -> None:
    sizer = ReadSizer(200 * KIB)
    assert sizer.update(64 * KIB) and sizer.size == 128 * KIB
    assert sizer.update(128 * KIB) and sizer.size == 200 * KIB
    assert not sizer.update(200 * KIB) and sizer.size == 200 * KIB


def test_maximum_below_the_start_is_the_only_size() -> None:
    sizer = ReadSizer(16 * KIB)
    assert sizer.size == 16 * KIB
    assert not sizer.update(16 * KIB)
    for _ in range(3 * READ_SIZE_SHRINK_AFTER):
        assert not sizer.update(10)
    assert sizer.size == 16 * KIB


def test_rejects_a_size_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReadSizer(0)


def test_reads_between_a_quarter_and_full_keep_the_size() -> None:
    """Many slow bots (a read of ~32 KiB each): neither grows nor shrinks."""
    sizer = ReadSizer(MIB)
    for _ in range(10 * READ_SIZE_SHRINK_AFTER):
        assert not sizer.update(32 * KIB)
        assert not sizer.update(16 * KIB)  # exactly a quarter: not small
    assert sizer.size == READ_SIZE_START


def grown(maximum: int = MIB) -> ReadSizer:
    sizer = ReadSizer(maximum)
    while sizer.update(sizer.size):
        pass
    assert sizer.size == maximum
    return sizer


def test_shrinks_by_half_after_several_small_reads_in_a_row() -> None:
    sizer = grown()
    small = MIB // 4 - 1
    for _ in range(READ_SIZE_SHRINK_AFTER - 1):
        assert not sizer.update(small)
    assert sizer.size == MIB
    assert sizer.update(small)
    assert sizer.size == 512 * KIB
    # The count starts again at the new size.
    for _ in range(READ_SIZE_SHRINK_AFTER - 1):
        assert not sizer.update(1)
    assert sizer.update(1) and sizer.size == 256 * KIB


def test_a_read_that_is_not_small_resets_the_count() -> None:
    sizer = grown()
    for _ in range(READ_SIZE_SHRINK_AFTER - 1):
        sizer.update(100)
    assert not sizer.update(MIB // 2)  # half full: not small, and not full
    for _ in range(READ_SIZE_SHRINK_AFTER - 1):
        assert not sizer.update(100)
    assert sizer.size == MIB
    assert sizer.update(100) and sizer.size == 512 * KIB


def test_a_full_read_resets_the_count_and_grows_again() -> None:
    sizer = grown()
    for _ in range(READ_SIZE_SHRINK_AFTER):
        sizer.update(0)
    assert sizer.size == 512 * KIB
    for _ in range(READ_SIZE_SHRINK_AFTER - 1):
        sizer.update(0)
    assert sizer.update(512 * KIB) and sizer.size == MIB
    assert not sizer.update(0) and sizer.size == MIB


def test_never_shrinks_below_the_start() -> None:
    sizer = grown()
    for _ in range(20 * READ_SIZE_SHRINK_AFTER):
        sizer.update(1)
    assert sizer.size == READ_SIZE_START
    assert not any(sizer.update(1) for _ in range(3 * READ_SIZE_SHRINK_AFTER))
    assert sizer.size == READ_SIZE_START


def test_a_cap_not_a_power_of_two_shrinks_to_the_start() -> None:
    sizer = grown(200 * KIB)
    sizes = []
    for _ in range(5 * READ_SIZE_SHRINK_AFTER):
        if sizer.update(0):
            sizes.append(sizer.size)
    assert sizes == [100 * KIB, READ_SIZE_START]


# ------------------------------------------------------------------------ in the adapters


@pytest.mark.parametrize(
    ("adapter", "tls"),
    [
        ("asyncio", False),
        ("asyncio-uvloop", False),
        ("sync", False),
        ("trio", False),
        ("asyncio", True),
        ("asyncio-uvloop", True),
    ],
)
def test_a_bot_flat_out_gets_bigger_reads_never_over_read_size(adapter: str, tls: bool) -> None:
    """A media chunk is what one read produced: over 64 KiB shows the size grew, and none is
    over ``read_size``; the stream arrives byte for byte. The asyncio adapter's reads are its
    ``get_buffer`` slices, on asyncio's loop and on uvloop's; with TLS, what one read hands
    over is the decrypted bytes, at most ``read_size`` too. (The sync and trio adapters' TLS
    reads return one TLS record, 16 KiB, at a time: not a size of ours.)"""
    if adapter == "asyncio-uvloop":
        pytest.importorskip("uvloop")
    biggest = 0

    def observer(event: Event) -> None:
        nonlocal biggest
        if isinstance(event, MediaChunk):
            biggest = max(biggest, len(event.data))

    options = ServerOptions(read_size=READ_SIZE_LIMIT, observer=observer)
    client_ssl = None
    if tls:
        import trustme

        options.ssl, client_ssl = tls_contexts(trustme.CA())
    payload = os.urandom(8 * MIB)
    collector = Collector()
    scheme = "wss" if tls else "ws"
    with running_server(adapter, collector, options) as port:
        with connect(f"{scheme}://127.0.0.1:{port}/", ssl=client_ssl, max_size=None) as ws:
            ws.send('{"type":"video_stream_start","bot_id":"flat-out"}')
            ws.send(payload)
        [handler] = collector.wait_finished(1)
    [stream] = handler.streams
    assert stream.offsets_ok and bytes(stream.data) == payload
    assert READ_SIZE_START < biggest <= READ_SIZE_LIMIT
