"""The core stays sans-IO, and its public names are what it says they are.

The core (``core/``, imported as ``meetstream_live``) never imports an event loop, a socket, a
thread, a clock, the file system or randomness, and never imports the adapters: bytes and the
time come in, events and bytes go out. These tests read the source, so a stray import fails
here before it can hide behind a dependency that happens to import the same module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import meetstream_live
from meetstream_live import Event, LocalProtocolError, MeetStreamError

CORE = Path(__file__).resolve().parents[2] / "core"

#: Modules that do I/O, keep time or draw randomness.
FORBIDDEN_MODULES = frozenset(
    {
        "asyncio",
        "socket",
        "threading",
        "multiprocessing",
        "concurrent",
        "trio",
        "anyio",
        "time",
        "datetime",
        "os",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
        "random",
        "secrets",
        "uuid",
        "selectors",
        "select",
        "signal",
        "ssl",
        "subprocess",
        "logging",
        "runpy",
        "importlib.util",
    }
)
#: The one core file allowed to reach the command line: ``python -m meetstream_live``.
MAIN = CORE / "__main__.py"
HAND_OVER = ('runpy.run_module("meetstream_live.adapters.cli", run_name="__main__", '
             'alter_sys=True)')
#: Builtins that do I/O or import behind the reader's back.
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "__import__", "exec", "eval", "breakpoint"})


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Every forbidden import or call in ``source``, as ``file:line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0:
                names = [module]
            else:
                # Relative: `from .adapters import x`, `from . import adapters`.
                names = [f"meetstream_live.{module}" if module else "meetstream_live"]
                names += [f"meetstream_live.{alias.name}" for alias in node.names if not module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_CALLS
        ):
            found.append(f"{filename}:{node.lineno}: calls {node.func.id}()")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
            node.value == "meetstream_live.adapters"
            or node.value.startswith("meetstream_live.adapters.")
        ):  # an import by name (importlib, runpy) hides from the import statements
            found.append(f"{filename}:{node.lineno}: names the adapters ({node.value!r})")
        line = getattr(node, "lineno", 0)
        for name in names:
            top = name.split(".")[0]
            if top in FORBIDDEN_MODULES:
                found.append(f"{filename}:{line}: imports {name}")
            if name == "meetstream_live.adapters" or name.startswith("meetstream_live.adapters."):
                found.append(f"{filename}:{line}: imports the adapters ({name})")
    return found


def core_files() -> list[Path]:
    files = sorted(p for p in CORE.glob("*.py") if p != MAIN)
    assert files, f"no core sources under {CORE}"
    return files


# ---------------------------------------------------------------------------- the checker itself


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import os.path",
        "import time as clock",
        "from socket import socketpair",
        "from concurrent.futures import ThreadPoolExecutor",
        "from .adapters import asyncio",
        "from .adapters._driver import ConnectionDriver",
        "from . import adapters",
        "from meetstream_live.adapters import ServerOptions",
        "import meetstream_live.adapters.asyncio",
        "def f():\n    import random\n",
        "import runpy",
        "importlib.import_module('meetstream_live.adapters.cli')",
        "data = open('x').read()",
        "print('hello')",
    ],
)
def test_the_checker_catches(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize(
    "source",
    [
        "import json",
        "from urllib.parse import urlsplit",
        "from ._events import Event",
        "from . import _events",
        "import h11",
        "x.open('file')",  # a method named open is not the builtin
    ],
)
def test_the_checker_lets_pure_code_through(source: str) -> None:
    assert violations(source) == []


# ---------------------------------------------------------------------------- the core


@pytest.mark.parametrize("path", core_files(), ids=lambda path: path.name)
def test_a_core_module_does_no_io_and_never_imports_the_adapters(path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8"), path.name) == []


def test_main_is_only_the_hand_over_to_the_command_line() -> None:
    """``core/__main__.py`` is allowed to name the command line, and does nothing else."""
    tree = ast.parse(MAIN.read_text(encoding="utf-8"))
    body = [node for node in tree.body
            if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    assert [ast.unparse(node) for node in body] == ["import runpy", HAND_OVER.replace('"', "'")]
    assert [v for v in violations(MAIN.read_text(encoding="utf-8"))
            if "runpy" not in v and "names the adapters" not in v] == []


def test_python_dash_m_meetstream_live_runs_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "meetstream_live", "--version"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"meetstream-live {meetstream_live.__version__}"


def test_importing_the_core_loads_no_event_loop_and_no_adapter() -> None:
    code = "import json, sys, meetstream_live; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(result.stdout))
    assert "meetstream_live" in loaded
    assert not {"asyncio", "trio"} & loaded
    assert not {name for name in loaded if name.startswith("meetstream_live.adapters")}


# ---------------------------------------------------------------------------- the public API


def test_every_name_in_all_exists() -> None:
    missing = [name for name in meetstream_live.__all__ if not hasattr(meetstream_live, name)]
    assert missing == []


def test_all_has_no_duplicates_and_no_private_names() -> None:
    names = meetstream_live.__all__
    assert len(names) == len(set(names))
    assert [n for n in names if n.startswith("_") and n != "__version__"] == []


def test_every_event_class_of_the_core_is_exported() -> None:
    from meetstream_live import _events

    event_classes = {
        name
        for name, value in vars(_events).items()
        if isinstance(value, type) and issubclass(value, Event)
    }
    assert event_classes <= set(meetstream_live.__all__)


def test_every_exported_event_is_a_frozen_dataclass() -> None:
    for name in meetstream_live.__all__:
        value = getattr(meetstream_live, name)
        if isinstance(value, type) and issubclass(value, Event) and value is not Event:
            params = getattr(value, "__dataclass_params__", None)
            assert params is not None, f"{name} is not a dataclass"
            assert params.frozen, name


def test_the_only_exception_is_local_protocol_error_under_meetstream_error() -> None:
    assert issubclass(LocalProtocolError, MeetStreamError)
    assert issubclass(MeetStreamError, Exception)
    exceptions = [
        name
        for name in meetstream_live.__all__
        if isinstance(getattr(meetstream_live, name), type)
        and issubclass(getattr(meetstream_live, name), BaseException)
    ]
    assert sorted(exceptions) == ["LocalProtocolError", "MeetStreamError"]


def test_the_version_is_a_string() -> None:
    assert isinstance(meetstream_live.__version__, str)
    assert meetstream_live.__version__.count(".") >= 2
