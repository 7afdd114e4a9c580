"""Targets and object keys: the bucket mirrors the output directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from meetstream_live.adapters.recording.upload.keys import (
    KeyTemplate,
    ObjectName,
    Target,
    beside,
    name_from_path,
    name_from_sidecar,
    name_of,
    parse_target,
    sidecar_key,
)


@pytest.mark.parametrize(("url", "bucket", "prefix"), [
    ("s3://rec", "rec", ""),
    ("s3://rec/", "rec", ""),
    ("s3://my.bucket-1/a/b/", "my.bucket-1", "a/b"),
])
def test_targets(url: str, bucket: str, prefix: str) -> None:
    target = parse_target(url)
    assert (target.bucket, target.prefix) == (bucket, prefix)
    assert parse_target(target.url) == target
    assert repr(target) == str(target) == target.url


@pytest.mark.parametrize(("url", "why"), [
    ("http://rec/x", "not an s3://"),
    ("s3://", "not a bucket name"),
    ("s3://UPPER/x", "not a bucket name"),
    ("s3://rec/a//b", "empty"),
    ("s3://rec/a/../b", "'..'"),
])
def test_bad_targets(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_target(url)


def test_the_default_key_mirrors_the_output_directory(tmp_path: Path) -> None:
    template = KeyTemplate()
    target = Target("rec", "meetings/eu")
    with_speaker = name_from_path(tmp_path, tmp_path / "bot-1" / "Ada" / "20250102T030405Z.mp4")
    assert template.key(target, with_speaker) == "meetings/eu/bot-1/Ada/20250102T030405Z.mp4"
    alone = name_from_path(tmp_path, tmp_path / "bot-1" / "20250102T030405Z_part002.mp4.part")
    assert alone == ObjectName("bot-1", "", "20250102T030405Z_part002",
                               "bot-1/20250102T030405Z_part002")
    assert alone.part == 2
    assert template.key(Target("rec"), alone) == "bot-1/20250102T030405Z_part002.mp4"


def test_names_from_the_bot_whatever_the_layout(tmp_path: Path) -> None:
    media = tmp_path / "2025" / "01" / "02" / "bot_1" / "030405.mp4.part"
    name = name_of("bot/1", "Ada", tmp_path, media)
    assert name == ObjectName("bot_1", "Ada", "030405", "2025/01/02/bot_1/030405")
    assert KeyTemplate().key(Target("r", "p"), name) == "p/bot_1/Ada/030405.mp4"
    assert KeyTemplate("{prefix}/{path}.mp4").key(Target("r", "p"), name) == \
        "p/2025/01/02/bot_1/030405.mp4"
    media.parent.mkdir(parents=True)
    (media.parent / "030405.json").write_text('{"bot_id": "bot/1", "speaker_id": "Ada"}')
    assert name_from_path(tmp_path, media.with_suffix("")) == name  # the sidecar says


def test_templates() -> None:
    name = ObjectName("b", "s", "20250102T030405Z_part003")
    assert KeyTemplate("{prefix}/{start}-{part}.mp4").key(Target("r", "p"), name) == \
        "p/20250102T030405Z_part003-3.mp4"
    with pytest.raises(ValueError, match="unknown field"):
        KeyTemplate("{prefix}/{meeting}.mp4")
    with pytest.raises(ValueError, match=r"no \{start\}"):
        KeyTemplate("{prefix}/{bot_id}.mp4")


def test_names_from_a_sidecar(tmp_path: Path) -> None:
    name = name_from_sidecar(tmp_path / "x.mp4", {"bot_id": "a/b", "speaker_id": None,
                                                   "speaker_name": "..Eve"})
    assert name == ObjectName("a_b", "Eve", "x")


def test_keys_beside_the_media() -> None:
    assert sidecar_key("p/b/x.mp4") == "p/b/x.json"
    assert beside("p/b/x.mp4", "x.session.json") == "p/b/x.session.json"
    assert beside("x.mp4", "x.session.json") == "x.session.json"
