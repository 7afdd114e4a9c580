"""Options declared once: flags > environment > config file > defaults, every value checked,
and a bad one named by its flag, its variable and where it came from (issue 17, items 4, 8)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from meetstream_live.adapters.cli import main
from meetstream_live.adapters.cli.options import (
    Option,
    OptionSet,
    UsageError,
    disk_size,
    duration,
    port,
    text,
)
from meetstream_live.adapters.cli.serve import serve_options

OPTIONS = OptionSet(
    [
        Option("port", port, 9876, "the port", aliases=("WS_PORT",)),
        Option("host", text, "127.0.0.1", "the host"),
        Option("upload", text, None, "targets", multiple=True),
        Option("token", text, None, "secret", secret=True),
        Option("idle", duration, 300.0, "idle"),
    ]
)


def test_flags_beat_the_environment_which_beats_the_file() -> None:
    settings = OPTIONS.resolve(
        {"port": "1"}, {"MEETSTREAM_LIVE_PORT": "2", "MEETSTREAM_LIVE_HOST": "h-env"},
        {"port": 3, "host": "h-file", "idle": "5s"}, "x.toml",
    )
    assert (settings.port, settings.host, settings.idle) == (1, "h-env", 5.0)
    assert settings.sources == {
        "port": "flag", "host": "$MEETSTREAM_LIVE_HOST", "upload": "default",
        "token": "default", "idle": "x.toml",
    }


def test_the_sample_receivers_variables_are_aliases_after_ours() -> None:
    assert OPTIONS.resolve({}, {"WS_PORT": "7000"}).port == 7000
    assert OPTIONS.resolve({}, {"WS_PORT": "7000", "MEETSTREAM_LIVE_PORT": "7001"}).port == 7001


@pytest.mark.parametrize(
    ("flags", "env", "file", "message"),
    [
        ({"port": "70000"}, {}, {}, "--port ($MEETSTREAM_LIVE_PORT): 70000 is not a port"),
        ({}, {"WS_PORT": "abc"}, {}, "not a port number: 'abc' (from $WS_PORT)"),
        ({}, {}, {"port": 99999}, "99999 is not a port number (0-65535; 0 picks a free one) "
                                  "(from x.toml)"),
        ({}, {}, {"idle": "soon"}, "--idle ($MEETSTREAM_LIVE_IDLE): not a duration: 'soon'"),
        ({}, {}, {"prot": 1}, "x.toml: unknown setting(s): prot"),
        ({}, {}, {"port": [1, 2]}, "--port ($MEETSTREAM_LIVE_PORT): one value, not a list"),
    ],
)
def test_a_bad_value_names_the_flag_the_variable_and_the_source(
    flags: dict[str, str], env: dict[str, str], file: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError) as error:
        OPTIONS.resolve(flags, env, file, "x.toml")
    assert message in str(error.value)


def test_repeatable_options_take_lists_everywhere() -> None:
    assert OPTIONS.resolve({"upload": ["a", "b"]}, {}).upload == ["a", "b"]
    assert OPTIONS.resolve({}, {"MEETSTREAM_LIVE_UPLOAD": "a, b"}).upload == ["a", "b"]
    assert OPTIONS.resolve({}, {}, {"upload": ["a"]}).upload == ["a"]
    assert OPTIONS.resolve({}, {}).upload is None


def test_secrets_are_masked() -> None:
    settings = OPTIONS.resolve({}, {"MEETSTREAM_LIVE_TOKEN": "hunter2"})
    assert settings.masked()["token"] == "***" and settings.token == "hunter2"
    assert OPTIONS.resolve({}, {}).masked()["token"] is None


def test_sizes_and_durations() -> None:
    assert disk_size("1.5g") == 3 << 29 and disk_size("0") == 0
    assert duration("250ms") == 0.25 and duration("2h") == 7200


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meetstream_live.adapters.cli", *argv],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "--port ($MEETSTREAM_LIVE_PORT): 70000 is not a port number"),
        (["--webhook", "example.com/hook"], "--webhook ($MEETSTREAM_LIVE_WEBHOOK): "
         "'example.com/hook' is not an http:// or https:// URL"),
        (["--on-finish", "no-such-program-here --x"], "--on-finish ($MEETSTREAM_LIVE_ON_FINISH):"
         " no such program: 'no-such-program-here'"),
        (["--path", "video"], "--path ($MEETSTREAM_LIVE_PATH): 'video' does not start with '/'"),
        (["--tls-cert", "/nowhere/cert.pem"], "no such file: /nowhere/cert.pem"),
        (["--idle-timeout", "forever"], "not a duration: 'forever'"),
        (["--disk-low", "lots"], "--disk-low ($MEETSTREAM_LIVE_DISK_LOW): not a size"),
        (["--adapter", "tornado"], "'tornado' is not one of asyncio, uvloop, sync, trio"),
        (["--workers", "0"], "--workers ($MEETSTREAM_LIVE_WORKERS): must be positive: 0"),
    ],
)
def test_serve_refuses_bad_values_in_one_line(argv: list[str], message: str) -> None:
    done = run("serve", *argv)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_mismatched_tls_files_are_named(tmp_path: Path) -> None:
    ca = trustme.CA()
    one, other = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    one.cert_chain_pems[0].write_to_path(str(cert))
    other.private_key_pem.write_to_path(str(key))
    done = run("serve", "--tls-cert", str(cert), "--tls-key", str(key),
               "--output", str(tmp_path / "out"))
    assert done.returncode == 2
    assert f"{cert} and {key}: not a certificate and its private key" in done.stderr


def test_config_prints_the_effective_settings_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "meetstream-live.toml"
    file.write_text('port = 7100\n[serve]\nidle_timeout = "2m"\noutput = "/srv/rec"\n')
    monkeypatch.setenv("MEETSTREAM_LIVE_TOKEN", "hunter2")
    monkeypatch.setenv("OUTPUT_DIR", "/env/rec")
    assert main(["config", "--config", str(file), "--host", "0.0.0.0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["port"] == {"value": 7100, "from": "meetstream-live.toml"}
    assert doc["idle_timeout"] == {"value": 120.0, "from": "meetstream-live.toml"}
    assert doc["output"] == {"value": "/env/rec", "from": "$OUTPUT_DIR"}  # env > file
    assert doc["host"] == {"value": "0.0.0.0", "from": "flag"}
    assert doc["token"] == {"value": "***", "from": "$MEETSTREAM_LIVE_TOKEN"}
    assert "hunter2" not in json.dumps(doc)


def test_every_serve_option_has_its_variable_and_documentation() -> None:
    """docs/config.md is generated from the declarations (see tests/cli/test_docs_config.py);
    every option says what it does."""
    options = serve_options()
    for option in options.options:
        assert option.help, option.name
        assert option.env[0] == "MEETSTREAM_LIVE_" + option.name.upper()
