"""The MeetStream message layer alone: :class:`Session`, below any WebSocket framing."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from helpers import NOW, of_type

from meetstream_live import (
    TRANSITIONS,
    CloseRequest,
    Disconnected,
    Event,
    LatencyPing,
    MediaChunk,
    ProtocolWarning,
    Session,
    SessionInput,
    SessionState,
    StreamEnded,
    StreamStarted,
    WarningKind,
)

START = {"type": "video_stream_start", "bot_id": "bot-123"}
END = {"type": "video_stream_end", "bot_id": "bot-123", "duration_seconds": 152.7}


def send(session: Session, message: Any, now_ms: int = NOW) -> list[Event]:
    return session.receive_text(json.dumps(message), now_ms)


def started(**fields: Any) -> Session:
    session = Session()
    send(session, {**START, **fields})
    return session


def warnings(events: list[Event]) -> list[WarningKind]:
    return [event.kind for event in of_type(events, ProtocolWarning)]


def pong(session: Session) -> dict[str, Any]:
    (message,) = session.messages_to_send()
    decoded: dict[str, Any] = json.loads(message)
    return decoded


# ---------------------------------------------------------------------------- the state table


def test_transitions_cover_every_state_change_and_nothing_leaves_closed() -> None:
    assert TRANSITIONS == {
        (SessionState.AWAITING_START, SessionInput.START): SessionState.STREAMING,
        (SessionState.STREAMING, SessionInput.END): SessionState.ENDED,
        (SessionState.ENDED, SessionInput.START): SessionState.STREAMING,
        (SessionState.AWAITING_START, SessionInput.CONNECTION_LOST): SessionState.CLOSED,
        (SessionState.STREAMING, SessionInput.CONNECTION_LOST): SessionState.CLOSED,
        (SessionState.ENDED, SessionInput.CONNECTION_LOST): SessionState.CLOSED,
    }


def test_a_new_session_awaits_its_start() -> None:
    session = Session()
    assert session.state is SessionState.AWAITING_START
    assert session.close_request is None
    assert session.streams_started == 0


# ---------------------------------------------------------------------------- the good path


def test_the_documented_session_gives_its_events_in_order() -> None:
    session = Session()
    start = {
        "type": "video_stream_start",
        "bot_id": "bot-123",
        "codec": "h264",
        "audio_codec": "aac",
        "container": "fmp4",
        "width": 1920,
        "height": 1080,
        "framerate": 25,
        "audio_sample_rate": 44100,
        "audio_bitrate": "128k",
    }
    events = send(session, start)
    events += session.receive_binary(b"ftyp")
    events += session.receive_binary(b"moov")
    events += send(session, END)
    assert events == [
        StreamStarted(
            bot_id="bot-123",
            codec="h264",
            audio_codec="aac",
            container="fmp4",
            width=1920,
            height=1080,
            framerate=25.0,
            audio_sample_rate=44100,
            audio_bitrate="128k",
        ),
        MediaChunk(b"ftyp", 0),
        MediaChunk(b"moov", 4),
        StreamEnded(152.7),
    ]
    assert events[0].raw == start  # type: ignore[attr-defined]
    assert session.state is SessionState.ENDED
    assert session.streams_started == 1


def test_start_keeps_unknown_fields_in_raw() -> None:
    (event,) = send(Session(), {**START, "region": "eu", "extra": [1, 2]})
    assert isinstance(event, StreamStarted)
    assert event.raw["region"] == "eu"
    assert event.raw["extra"] == [1, 2]


def test_framerate_is_a_float_even_when_sent_as_an_int() -> None:
    (event,) = send(Session(), {**START, "framerate": 25})
    assert isinstance(event, StreamStarted)
    assert event.framerate == 25.0
    assert isinstance(event.framerate, float)


def test_ping_is_answered_with_a_pong_echoing_its_fields() -> None:
    session = started()
    events = send(
        session,
        {"type": "video_latency_ping", "bot_id": "b", "seq": 42, "sent_at_ms": 1743500000123},
        now_ms=1743500000189,
    )
    assert events == [LatencyPing(42, 1743500000123, 1743500000189, "b")]
    assert pong(session) == {
        "type": "video_latency_pong",
        "seq": 42,
        "sent_at_ms": 1743500000123,
        "server_received_at_ms": 1743500000189,
        "bot_id": "b",
    }


def test_messages_to_send_clears_the_queue() -> None:
    session = started()
    send(session, {"type": "video_latency_ping", "seq": 1, "sent_at_ms": 1})
    send(session, {"type": "video_latency_ping", "seq": 2, "sent_at_ms": 2})
    assert [json.loads(m)["seq"] for m in session.messages_to_send()] == [1, 2]
    assert session.messages_to_send() == []


def test_ping_without_bot_id_gets_the_bot_id_of_the_start() -> None:
    session = started(bot_id="from-start")
    (event,) = send(session, {"type": "video_latency_ping", "seq": 1, "sent_at_ms": 5})
    assert event == LatencyPing(1, 5, NOW, "from-start")
    assert pong(session)["bot_id"] == "from-start"


def test_ping_with_a_null_bot_id_gets_the_bot_id_of_the_start() -> None:
    session = started(bot_id="from-start")
    (event,) = send(
        session, {"type": "video_latency_ping", "seq": 1, "sent_at_ms": 5, "bot_id": None}
    )
    assert event == LatencyPing(1, 5, NOW, "from-start")
    assert pong(session)["bot_id"] == "from-start"


def test_ping_before_any_start_and_without_bot_id_gets_a_pong_without_bot_id() -> None:
    session = Session()
    (event,) = send(session, {"type": "video_latency_ping", "seq": 1, "sent_at_ms": 5})
    assert event == LatencyPing(1, 5, NOW, None)
    assert "bot_id" not in pong(session)


def test_ping_with_a_non_string_bot_id_echoes_it_and_reports_none() -> None:
    session = started()
    (event,) = send(session, {"type": "video_latency_ping", "seq": 1, "sent_at_ms": 5, "bot_id": 7})
    assert isinstance(event, LatencyPing)
    assert event.bot_id is None
    assert pong(session)["bot_id"] == 7


def test_pings_never_change_the_state() -> None:
    for session in (Session(), started()):
        before = session.state
        send(session, {"type": "video_latency_ping", "seq": 1, "sent_at_ms": 1})
        assert session.state is before


def test_text_pieces_are_joined_before_parsing() -> None:
    session = Session()
    text = json.dumps(START)
    assert session.receive_text(text[:5], NOW, finished=False) == []
    assert session.receive_text(text[5:9], NOW, finished=False) == []
    (event,) = session.receive_text(text[9:], NOW)
    assert isinstance(event, StreamStarted)


def test_empty_binary_is_ignored() -> None:
    session = started()
    assert session.receive_binary(b"") == []
    assert session.receive_binary(b"x") == [MediaChunk(b"x", 0)]


# ---------------------------------------------------------------------------- bad JSON


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        pytest.param("{not json", WarningKind.INVALID_JSON, id="invalid-json"),
        pytest.param("", WarningKind.INVALID_JSON, id="empty"),
        pytest.param(
            '{"type": "video_latency_ping", "seq": NaN}', WarningKind.INVALID_JSON, id="nan-literal"
        ),
        pytest.param('{"seq": Infinity}', WarningKind.INVALID_JSON, id="infinity-literal"),
        pytest.param('[{"type": "video_stream_start"}]', WarningKind.NOT_AN_OBJECT, id="array"),
        pytest.param("42", WarningKind.NOT_AN_OBJECT, id="number"),
        pytest.param("null", WarningKind.NOT_AN_OBJECT, id="null"),
        pytest.param('"video_stream_start"', WarningKind.NOT_AN_OBJECT, id="string"),
        pytest.param('{"type": "video_stream_pause"}', WarningKind.UNKNOWN_TYPE, id="unknown"),
        pytest.param('{"type": null}', WarningKind.UNKNOWN_TYPE, id="null-type"),
        pytest.param(
            '{"type": ["video_stream_start"]}', WarningKind.UNKNOWN_TYPE, id="unhashable-type"
        ),
        pytest.param('{"bot_id": "b"}', WarningKind.MISSING_FIELD, id="no-type"),
    ],
)
def test_a_bad_text_message_is_one_warning_and_changes_nothing(
    text: str, kind: WarningKind
) -> None:
    for session in (Session(), started()):
        before = session.state
        assert warnings(session.receive_text(text, NOW)) == [kind]
        assert session.state is before
        assert session.close_request is None
        assert session.messages_to_send() == []


def test_a_nan_ping_gets_no_pong_because_it_is_not_json() -> None:
    session = started()
    session.receive_text('{"type":"video_latency_ping","seq":1,"sent_at_ms":NaN}', NOW)
    assert session.messages_to_send() == []


def test_json_nested_deeper_than_the_parser_allows_is_invalid_json() -> None:
    depth = sys.getrecursionlimit() + 10
    text = '{"type": "video_latency_ping", "seq": ' + "[" * depth + "]" * depth + "}"
    assert warnings(Session().receive_text(text, NOW)) == [WarningKind.INVALID_JSON]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "template",
    [
        '{{"type": {}}}',
        '{{"type": "video_stream_start", "bot_id": "b", "width": {}}}',
        '{{"type": "video_stream_end", "duration_seconds": {}}}',
    ],
    ids=["type", "start-field", "end-duration"],
)
def test_no_nesting_depth_of_a_warned_field_makes_receive_text_raise(template: str) -> None:
    # json.loads accepts nesting up to about the recursion limit; the repr of the value in the
    # warning must not need more depth than that.
    limit = sys.getrecursionlimit()
    for depth in range(limit - 200, limit + 10):
        session = started() if "end" in template else Session()
        session.receive_text(template.format(_nested(depth)), NOW)


def test_a_ping_at_any_nesting_depth_is_either_invalid_json_or_gets_one_pong() -> None:
    # json.loads accepts nesting up to about the recursion limit, and encoding the pong needs
    # a little more depth than decoding the ping did: near the limit the seq cannot be echoed.
    limit = sys.getrecursionlimit()
    echoed = not_echoed = 0
    for depth in range(limit - 200, limit + 10):
        session = started()
        text = '{"type": "video_latency_ping", "seq": ' + _nested(depth) + ', "sent_at_ms": 5}'
        events = session.receive_text(text, NOW)
        if warnings(events) == [WarningKind.INVALID_JSON]:
            assert session.messages_to_send() == []
            continue
        assert of_type(events, LatencyPing) == [LatencyPing(None, 5, NOW, "bot-123")]
        answer = pong(session)
        assert answer["sent_at_ms"] == 5
        if "seq" in answer:
            echoed += 1
        else:  # the fields that can be echoed are, with a warning for the one that cannot
            not_echoed += 1
            assert WarningKind.BAD_FIELD in warnings(events)
    assert echoed > 0


def test_a_warning_about_a_huge_field_value_stays_short() -> None:
    session = started()
    events = send(session, {"type": "video_latency_ping", "seq": "x" * 100_000, "sent_at_ms": 1})
    (warning,) = of_type(events, ProtocolWarning)
    assert len(warning.message) < 200
    assert pong(session)["seq"] == "x" * 100_000  # the echo itself is exact


def test_a_warning_about_a_huge_start_field_stays_short() -> None:
    events = send(Session(), {**START, "width": list(range(100_000))})
    (warning,) = of_type(events, ProtocolWarning)
    assert len(warning.message) < 200


# ---------------------------------------------------------------------------- pings


def test_ping_without_seq_is_answered_without_seq_and_warned() -> None:
    session = started()
    events = send(session, {"type": "video_latency_ping", "sent_at_ms": 5})
    assert warnings(events) == [WarningKind.MISSING_FIELD]
    assert events[-1] == LatencyPing(None, 5, NOW, "bot-123")
    assert pong(session) == {
        "type": "video_latency_pong",
        "sent_at_ms": 5,
        "server_received_at_ms": NOW,
        "bot_id": "bot-123",
    }


def test_ping_without_sent_at_ms_is_answered_without_it_and_warned() -> None:
    session = started()
    events = send(session, {"type": "video_latency_ping", "seq": 3})
    assert warnings(events) == [WarningKind.MISSING_FIELD]
    assert events[-1] == LatencyPing(3, None, NOW, "bot-123")
    assert pong(session) == {
        "type": "video_latency_pong",
        "seq": 3,
        "server_received_at_ms": NOW,
        "bot_id": "bot-123",
    }


def test_ping_with_a_string_seq_echoes_the_string_and_warns() -> None:
    session = started()
    events = send(session, {"type": "video_latency_ping", "seq": "42", "sent_at_ms": 5})
    assert warnings(events) == [WarningKind.BAD_FIELD]
    assert events[-1] == LatencyPing(None, 5, NOW, "bot-123")
    assert pong(session)["seq"] == "42"


def test_ping_with_a_huge_int_seq_echoes_it_exactly_and_warns() -> None:
    session = started()
    events = send(session, {"type": "video_latency_ping", "seq": 10**30, "sent_at_ms": 10**30})
    # Echoed exactly; but over 2**53 - 1 no JavaScript bot could have sent or match it.
    assert warnings(events) == [WarningKind.BAD_FIELD]
    assert events[-1] == LatencyPing(10**30, 10**30, NOW, "bot-123")
    raw = session.messages_to_send()[0]
    assert '"seq":1000000000000000000000000000000' in raw
    assert json.loads(raw)["sent_at_ms"] == 10**30


def test_ping_with_a_float_sent_at_ms_keeps_it() -> None:
    session = started()
    events = send(session, {"type": "video_latency_ping", "seq": 1, "sent_at_ms": 1.5})
    assert events == [LatencyPing(1, 1.5, NOW, "bot-123")]
    assert pong(session)["sent_at_ms"] == 1.5


@pytest.mark.parametrize("value", [True, None, "5", [5], {"ms": 5}])
def test_ping_with_a_non_number_sent_at_ms_echoes_it_and_warns(value: Any) -> None:
    session = started()
    events = send(session, {"type": "video_latency_ping", "seq": 1, "sent_at_ms": value})
    assert warnings(events) == [WarningKind.BAD_FIELD]
    assert events[-1] == LatencyPing(1, None, NOW, "bot-123")
    assert pong(session)["sent_at_ms"] == value


@pytest.mark.parametrize("value", [True, 1.0, None])
def test_ping_with_a_non_int_seq_is_warned(value: Any) -> None:
    session = started()
    events = send(session, {"type": "video_latency_ping", "seq": value, "sent_at_ms": 1})
    assert warnings(events) == [WarningKind.BAD_FIELD]
    assert events[-1] == LatencyPing(None, 1, NOW, "bot-123")


# ---------------------------------------------------------------------------- starts


def test_start_without_bot_id_starts_a_stream_with_a_warning() -> None:
    session = Session()
    events = send(session, {"type": "video_stream_start", "codec": "h264"})
    assert warnings(events) == [WarningKind.MISSING_FIELD]
    assert events[-1] == StreamStarted(bot_id=None, codec="h264")
    assert session.state is SessionState.STREAMING


def test_start_with_a_null_bot_id_counts_as_missing() -> None:
    events = send(Session(), {"type": "video_stream_start", "bot_id": None})
    assert warnings(events) == [WarningKind.MISSING_FIELD]


@pytest.mark.parametrize(
    ("field", "value", "attribute"),
    [
        ("width", "1920", "width"),
        ("height", 1080.0, "height"),
        ("width", True, "width"),
        ("framerate", "25", "framerate"),
        ("framerate", False, "framerate"),
        ("audio_sample_rate", [44100], "audio_sample_rate"),
        ("codec", 264, "codec"),
        ("audio_bitrate", 12.8, "audio_bitrate"),
        ("bot_id", 123, "bot_id"),
        ("speakerName", 5, "speaker_name"),
        ("speakerId", True, "speaker_id"),
    ],
)
def test_start_with_a_mistyped_field_gives_none_and_a_bad_field_warning(
    field: str, value: Any, attribute: str
) -> None:
    session = Session()
    events = send(session, {**START, field: value})
    assert warnings(events) == [WarningKind.BAD_FIELD]
    assert getattr(events[-1], attribute) is None
    assert session.state is SessionState.STREAMING


def test_start_takes_speaker_id_and_name_in_camel_case() -> None:
    (event,) = send(Session(), {**START, "speakerId": "s-1", "speakerName": "Ada"})
    assert isinstance(event, StreamStarted)
    assert (event.speaker_id, event.speaker_name) == ("s-1", "Ada")


def test_start_takes_speaker_id_and_name_in_snake_case() -> None:
    (event,) = send(Session(), {**START, "speaker_id": "s-1", "speaker_name": "Ada"})
    assert isinstance(event, StreamStarted)
    assert (event.speaker_id, event.speaker_name) == ("s-1", "Ada")


def test_camel_case_speaker_id_wins_over_snake_case() -> None:
    (event,) = send(Session(), {**START, "speakerId": "camel", "speaker_id": "snake"})
    assert isinstance(event, StreamStarted)
    assert event.speaker_id == "camel"


def test_an_int_speaker_id_becomes_a_string() -> None:
    (event,) = send(Session(), {**START, "speakerId": 17})
    assert isinstance(event, StreamStarted)
    assert event.speaker_id == "17"


def test_an_int_audio_bitrate_becomes_a_string() -> None:
    (event,) = send(Session(), {**START, "audio_bitrate": 128000})
    assert isinstance(event, StreamStarted)
    assert event.audio_bitrate == "128000"


def test_a_second_start_during_a_stream_is_warned_and_ignored() -> None:
    session = started(bot_id="first")
    session.receive_binary(b"abc")
    events = send(session, {**START, "bot_id": "second"})
    assert warnings(events) == [WarningKind.UNEXPECTED_MESSAGE]
    assert len(events) == 1
    assert session.bot_id == "first"
    assert session.streams_started == 1
    assert session.receive_binary(b"d") == [MediaChunk(b"d", 3)]


def test_binary_before_start_is_released_right_after_start_from_offset_0() -> None:
    session = Session()
    assert session.receive_binary(b"early") == []
    assert session.receive_binary(b"-bytes") == []
    events = send(session, START)
    assert events[1:] == [MediaChunk(b"early", 0), MediaChunk(b"-bytes", 5)]
    assert session.receive_binary(b"!") == [MediaChunk(b"!", 11)]


def test_binary_before_start_over_the_limit_requests_close_1009() -> None:
    session = Session(max_early_bytes=10)
    session.receive_binary(b"0123456789")
    assert session.close_request is None
    session.receive_binary(b"X")
    assert session.close_request is not None
    assert session.close_request.code == 1009


# ---------------------------------------------------------------------------- ends


def test_end_before_start_is_warned_and_ignored() -> None:
    session = Session()
    events = send(session, END)
    assert warnings(events) == [WarningKind.UNEXPECTED_MESSAGE]
    assert session.state is SessionState.AWAITING_START


def test_a_second_end_is_warned_and_ignored() -> None:
    session = started()
    send(session, END)
    assert warnings(send(session, END)) == [WarningKind.UNEXPECTED_MESSAGE]
    assert session.state is SessionState.ENDED


def test_end_without_duration_has_none() -> None:
    session = started()
    assert send(session, {"type": "video_stream_end"}) == [StreamEnded(None)]


@pytest.mark.parametrize("value", ["152.7", True, [1]])
def test_end_with_a_mistyped_duration_has_none_and_a_warning(value: Any) -> None:
    session = started()
    events = send(session, {"type": "video_stream_end", "duration_seconds": value})
    assert warnings(events) == [WarningKind.BAD_FIELD]
    assert events[-1] == StreamEnded(None)
    assert session.state is SessionState.ENDED


def test_an_int_duration_becomes_a_float() -> None:
    session = started()
    (event,) = send(session, {"type": "video_stream_end", "duration_seconds": 3})
    assert isinstance(event, StreamEnded)
    assert event.duration_seconds == 3.0
    assert isinstance(event.duration_seconds, float)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "video_stream_end", "duration_seconds": 10**400},
        {**START, "framerate": 10**400},
    ],
    ids=["end-duration", "start-framerate"],
)
def test_a_number_too_big_for_a_float_is_a_bad_field_not_a_crash(message: Any) -> None:
    session = started() if message["type"] == "video_stream_end" else Session()
    events = send(session, message)
    assert warnings(events) == [WarningKind.BAD_FIELD]


def strict_json(text: str) -> Any:
    """Parse as RFC 8259 JSON: NaN and Infinity are not JSON."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text}"))


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "video_latency_ping", "seq": 1, "sent_at_ms": 1e999}',
        '{"type": "video_latency_ping", "seq": -1e999, "sent_at_ms": 5}',
        '{"type": "video_latency_ping", "seq": 1, "sent_at_ms": 5, "bot_id": 1e999}',
    ],
    ids=["sent_at_ms", "seq", "bot_id"],
)
def test_a_pong_is_always_strict_json(text: str) -> None:
    # Either fix will do: refuse 1e999 as JSON like the NaN/Infinity literals (no pong), or
    # answer without the field that cannot be echoed.
    session = started()
    session.receive_text(text, NOW)
    for message in session.messages_to_send():
        assert strict_json(message)["type"] == "video_latency_pong"


def test_binary_after_end_is_warned_once_and_held_for_the_next_stream() -> None:
    session = started()
    session.receive_binary(b"first")
    send(session, END)
    assert warnings(session.receive_binary(b"late")) == [WarningKind.BINARY_OUTSIDE_STREAM]
    assert session.receive_binary(b"-more") == []
    events = send(session, {**START, "bot_id": "again"})
    assert events == [
        StreamStarted(bot_id="again"),
        MediaChunk(b"late", 0),
        MediaChunk(b"-more", 4),
    ]


def test_a_new_start_after_end_is_a_new_stream_with_offsets_from_0() -> None:
    session = started()
    session.receive_binary(b"one")
    send(session, END)
    (event,) = send(session, {**START, "bot_id": "two"})
    assert event == StreamStarted(bot_id="two")
    assert session.state is SessionState.STREAMING
    assert session.streams_started == 2
    assert session.bot_id == "two"
    assert session.receive_binary(b"xy") == [MediaChunk(b"xy", 0)]


# ------------------------------------------------------------------ the end of a connection


def test_connection_lost_after_end_is_clean() -> None:
    session = started()
    send(session, END)
    assert session.connection_lost(1000) == [Disconnected(1000, "", True)]
    assert session.state is SessionState.CLOSED


def test_connection_lost_during_a_stream_is_not_clean() -> None:
    session = started()
    assert session.connection_lost(1000, "bye") == [Disconnected(1000, "bye", False)]


def test_connection_lost_before_any_start_and_without_bytes_is_clean() -> None:
    assert Session().connection_lost(1006) == [Disconnected(1006, "", True)]


def test_bytes_without_any_start_are_delivered_as_orphans_before_disconnected() -> None:
    session = Session()
    session.receive_binary(b"ab")
    session.receive_binary(b"cd")
    assert session.connection_lost(1006) == [
        MediaChunk(b"ab", 0),
        MediaChunk(b"cd", 2),
        Disconnected(1006, "", False),
    ]


def test_bytes_after_end_with_no_next_stream_are_orphans_from_offset_0() -> None:
    session = started()
    session.receive_binary(b"stream")
    send(session, END)
    session.receive_binary(b"late")
    assert session.connection_lost(1000) == [MediaChunk(b"late", 0), Disconnected(1000, "", False)]


def test_connection_lost_twice_gives_nothing_the_second_time() -> None:
    session = started()
    session.connection_lost(1006)
    assert session.connection_lost(1006) == []


def test_input_after_connection_lost_is_ignored() -> None:
    session = started()
    session.connection_lost(1006)
    assert session.receive_binary(b"x") == []
    assert send(session, {"type": "video_latency_ping", "seq": 1, "sent_at_ms": 1}) == []
    assert session.messages_to_send() == []


# ---------------------------------------------------------------------------- limits


def test_text_over_max_text_size_requests_close_1009() -> None:
    session = Session(max_text_size=100)
    assert session.receive_text("x" * 101, NOW) == []
    assert session.close_request == CloseRequest(1009, "text message over 100 bytes")


def test_text_over_max_text_size_in_many_pieces_requests_close_1009() -> None:
    session = Session(max_text_size=100)
    for _ in range(10):
        assert session.receive_text("x" * 10, NOW, finished=False) == []
    assert session.close_request is None
    session.receive_text("x", NOW, finished=False)
    assert session.close_request is not None
    assert session.close_request.code == 1009


def test_text_size_counts_utf8_bytes_not_characters() -> None:
    session = Session(max_text_size=10)
    session.receive_text("é" * 6, NOW)  # 12 bytes
    assert session.close_request is not None


def test_text_of_exactly_max_text_size_is_accepted() -> None:
    message = json.dumps(START)
    session = Session(max_text_size=len(message))
    assert len(session.receive_text(message, NOW)) == 1
    assert session.close_request is None


def test_the_text_limit_is_per_message() -> None:
    message = json.dumps({"type": "video_latency_ping", "seq": 1, "sent_at_ms": 1})
    session = Session(max_text_size=len(message))
    for _ in range(5):
        session.receive_text(message, NOW)
    assert session.close_request is None


def test_input_after_a_close_request_is_ignored() -> None:
    session = Session(max_text_size=10)
    session.receive_text("x" * 11, NOW)
    assert send(session, START) == []
    assert session.receive_binary(b"x") == []
    assert session.state is SessionState.AWAITING_START


@pytest.mark.parametrize("seq", [2**53 - 1, -(2**53 - 1)])
def test_a_seq_at_the_json_safe_edge_is_not_warned(seq: int) -> None:
    session = started()
    events = send(session, {"type": "video_latency_ping", "seq": seq, "sent_at_ms": 5})
    assert warnings(events) == []
