"""Install and run like a Python tool: one version source, no exact pins in published extras,
``make serve`` without the test toolchain, and the deployment files exercised: the systemd
unit verified (``systemd-analyze verify`` where there is one, a parser check elsewhere), the
Dockerfile's health check run against a real receiver, the image built where a container
engine runs (skipped, with the reason, where none does)."""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import meetstream_live

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "meetstream-live.service"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


# ---------------------------------------------------------------------------- packaging


def test_one_version_source() -> None:
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    assert importlib.metadata.version("meetstream-live") == meetstream_live.__version__


def test_published_extras_have_no_exact_pins() -> None:
    for extra, requirements in PROJECT["optional-dependencies"].items():
        if extra == "test":
            continue  # the suite's known-good set
        pinned = [r for r in requirements if "==" in r.split(";")[0]]  # not the markers
        assert not pinned, f"[{extra}] pins {pinned}"
    assert not [r for r in PROJECT["dependencies"] if "==" in r.split(";")[0]]


def test_project_urls_and_what_serving_needs() -> None:
    assert {"Homepage", "Documentation", "Changelog", "Issues", "Source"} <= set(
        PROJECT["urls"])
    assert any(r.startswith("prometheus-client") for r in PROJECT["dependencies"])
    make = (ROOT / "Makefile").read_text()
    (line,) = re.findall(r"^install-serve:.*\n\t(.+)$", make, re.MULTILINE)
    assert "test" not in line and ".[trio]" in line  # not the test toolchain
    assert re.search(r"^serve: install-serve$", make, re.MULTILINE)


# ---------------------------------------------------------------------------- systemd


def _unit_for_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's command (the verifier checks
    that the program exists)."""
    text = UNIT.read_text().replace("/opt/meetstream-live/bin/meetstream-live",
                                    shutil.which("meetstream-live") or sys.executable)
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here: test_the_systemd_unit_parses checks the unit")
    done = subprocess.run([analyze, "verify", str(_unit_for_here(tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False)
    # verify exits 0 on keys it cannot parse, but says so: nothing must be said.
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    bad = tmp_path / "bad" / UNIT.name
    bad.parent.mkdir()
    bad.write_text(_unit_for_here(tmp_path).read_text().replace("KillMode=mixed",
                                                                "KillMode=sometimes"))
    worse = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert "kill mode" in worse.stderr  # the check would see a broken unit


def test_the_systemd_unit_parses() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).is_absolute() and argv[1:] == ["serve"]
    assert service["Type"] == "exec"
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "root")
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    from meetstream_live.adapters.cli.serve import SERVE_OPTIONS

    defaults = {o.name: o.default for o in SERVE_OPTIONS}
    assert float(service["TimeoutStopSec"]) > defaults["drain_timeout"] + defaults[
        "shutdown_delay"] + 10
    assert service["Restart"] == "on-failure" and service["StateDirectory"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


# ---------------------------------------------------------------------------- Docker


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_the_dockerfile_is_slim_and_runs_as_nobody_in_particular() -> None:
    steps = _instructions()
    froms = [arg for op, arg in steps if op == "FROM"]
    assert froms and all("-slim" in image.split()[0] for image in froms)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert ("ENTRYPOINT", '["meetstream-live"]') in final and ("CMD", '["serve"]') in final
    assert not any("test" in arg for op, arg in final if op == "RUN")  # no test toolchain
    assert any(op == "HEALTHCHECK" and "/healthz" in arg for op, arg in final)


def _healthcheck() -> list[str]:
    (arg,) = [arg for op, arg in _instructions() if op == "HEALTHCHECK"]
    command = json.loads(arg[arg.index("CMD") + 3:].strip())
    assert isinstance(command, list) and command[0] == "python"
    return [sys.executable, *command[1:]]


def test_the_images_health_check_against_a_real_receiver(tmp_path: Path) -> None:
    from cli.test_serve import serving

    with serving(tmp_path, "--port", "0", "--output", str(tmp_path / "rec")) as (port, _):
        ok = subprocess.run(_healthcheck(), env={"MEETSTREAM_LIVE_PORT": str(port)},
                            capture_output=True, timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr
    gone = subprocess.run(_healthcheck(), env={"MEETSTREAM_LIVE_PORT": str(port)},
                          capture_output=True, timeout=30, check=False)
    assert gone.returncode != 0  # nothing answers any more


def _engine() -> str | None:
    for tool in ("docker", "podman"):
        path = shutil.which(tool)
        if path is not None and subprocess.run([path, "info"], capture_output=True,
                                                timeout=30, check=False).returncode == 0:
            return path
    return None


def test_the_image_builds_and_serves(tmp_path: Path) -> None:
    engine = _engine()
    if engine is None:
        pytest.skip("no container engine runs here (docker/podman info fails): the image "
                    "is built where one does; its health check is tested above")
    tag = "meetstream-live:test"
    subprocess.run([engine, "build", "-t", tag, str(ROOT)], check=True, timeout=1200)
    done = subprocess.run([engine, "run", "--rm", tag, "--version"], capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.strip() == f"meetstream-live {meetstream_live.__version__}"
    user = subprocess.run([engine, "run", "--rm", "--entrypoint", "id", tag, "-u"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert user.stdout.strip() != "0"


# ---------------------------------------------------------------------------- the docs


@pytest.mark.parametrize("path", [UNIT, DOCKERFILE], ids=lambda p: p.name)
def test_docs_deploy_shows_the_files_as_they_are(path: Path) -> None:
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", DEPLOY_DOC.read_text(),
                        re.DOTALL)
    shown = dict(blocks)
    assert shown[str(path.relative_to(ROOT))] == path.read_text()
