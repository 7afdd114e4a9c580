"""Subject tokens: safe in a NATS subject whatever the bot_id or speaker (no ``.``, ``*``,
``>``, whitespace), injective (two values never share a subject), and invertible."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meetstream_live.adapters.recording.bus import StreamKey, decode_token, encode_token

SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(st.text())
def test_a_token_is_safe_and_decodes_back(value: str) -> None:
    token = encode_token(value)
    assert token and set(token) <= SAFE
    assert decode_token(token) == value


@given(st.text(), st.text())
def test_tokens_are_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_token(a) != encode_token(b)


@pytest.mark.parametrize(("bot", "speaker", "subject"), [
    ("bot-1", None, "meetstream.bot-1._.media"),
    ("a.b", "", "meetstream.a_2Eb._.media"),
    ("*", ">", "meetstream._2A._3E.media"),
    ("_", "x y", "meetstream._5F.x_20y.media"),
    ("é", "\t", "meetstream._C3_A9._09.media"),
])
def test_subjects(bot: str, speaker: str | None, subject: str) -> None:
    assert StreamKey(bot, speaker).subject("media") == subject


@pytest.mark.parametrize("token", ["", "a.b", "_4", "_41", "_zz", "a b", "_2e"])
def test_what_encode_cannot_make_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="not an encoded token"):
        decode_token(token)
