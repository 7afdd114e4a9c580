"""The layers stay visible: application -> transports -> core, never the other way.

* the core (``meetstream_live``, in ``core/``) imports no adapter;
* a transport (``meetstream_live.adapters`` and its modules beside ``asyncio.py``) imports
  neither the application (``adapters/recording/``, ``adapters/cli/``) nor another transport's
  stack beyond its own (the shared ``_*`` modules excepted);
* no application module sits directly beside the transports;
* the public names of each layer are what its ``__all__`` says (like websockets'
  ``test_exports.py``).

The imports are read from the source (every ``import`` statement, at any depth, including
function-level ones), so a lazy import cannot hide a wrong dependency.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
ADAPTERS = ROOT / "adapters"
#: The application: subpackages of ``adapters/``.
APPLICATION = ("recording", "cli")
#: The transports and what they share, directly in ``adapters/``.
TRANSPORTS = ("asyncio", "sync", "trio", "asgi")
SHARED = ("_bots", "_delivery", "_driver", "_handler", "_system", "__init__")


def imports_of(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports, as absolute names (relative ones resolved against
    ``package``, the package the file is in)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def adapter_files() -> list[Path]:
    return sorted(ADAPTERS.glob("*.py"))


def test_no_application_module_sits_beside_the_transports() -> None:
    names = {path.stem for path in adapter_files()}
    stray = sorted(names - set(TRANSPORTS) - set(SHARED))
    assert not stray, (
        "adapters/ holds the transports and what they share; the application lives in "
        f"adapters/{{{','.join(APPLICATION)}}}/: move {stray}"
    )
    for sub in APPLICATION:
        assert (ADAPTERS / sub / "__init__.py").is_file()


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_adapter(path: Path) -> None:
    imported = imports_of(path, "meetstream_live")
    bad = {m for m in imported if m.startswith("meetstream_live.adapters")}
    assert not bad, f"{path.name} imports {bad}"


def test_only_the_cores_main_names_the_command_line() -> None:
    """``python -m meetstream_live`` hands over to ``meetstream_live.adapters.cli`` by name
    (``core/__main__.py``, which nothing imports); no other core file names an adapter, even
    in a string (``importlib``, ``runpy`` would hide it from the import statements)."""
    naming = set()
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                node.value.split(".")[:2] == ["meetstream_live", "adapters"]
            ):
                naming.add((path.name, node.value))
    assert naming == {("__main__.py", "meetstream_live.adapters.cli")}


@pytest.mark.parametrize("path", adapter_files(), ids=lambda p: p.name)
def test_a_transport_imports_no_application(path: Path) -> None:
    imported = imports_of(path, "meetstream_live.adapters")
    bad = {
        m for m in imported
        if any(m.startswith(f"meetstream_live.adapters.{app}") for app in APPLICATION)
    }
    assert not bad, f"{path.name} imports the application: {bad}"


@pytest.mark.parametrize("path", adapter_files(), ids=lambda p: p.name)
def test_a_transport_imports_no_other_transport(path: Path) -> None:
    if path.stem not in TRANSPORTS:
        return
    imported = imports_of(path, "meetstream_live.adapters")
    others = {f"meetstream_live.adapters.{t}" for t in TRANSPORTS if t != path.stem}
    assert not (imported & others), f"{path.name} imports {imported & others}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text(
        "def f():\n    from .recording import recorder\n    import meetstream_live.adapters.cli\n"
    )
    found = imports_of(source, "meetstream_live.adapters")
    assert "meetstream_live.adapters.recording.recorder" in found
    assert "meetstream_live.adapters.cli" in found


@pytest.mark.parametrize(
    "module",
    [
        "meetstream_live",
        "meetstream_live.fmp4",
        "meetstream_live.adapters",
        "meetstream_live.adapters.asyncio",
        "meetstream_live.adapters.sync",
        "meetstream_live.adapters.trio",
        "meetstream_live.adapters.asgi",
        "meetstream_live.adapters.recording",
        "meetstream_live.adapters.recording.sinks",
    ],
)
def test_every_public_name_exists_and_is_listed_once(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(mod, name), f"{module}.{name}"
        assert not name.startswith("_") or name == "__version__"


def test_the_transports_keep_their_public_names() -> None:
    """What users import from each transport (issue 11: public names unchanged)."""
    expected = {
        "meetstream_live.adapters.asyncio": {"AsyncioBot", "AsyncioServer", "run", "serve"},
        "meetstream_live.adapters.sync": {"SyncBot", "SyncServer", "run", "serve"},
        "meetstream_live.adapters.trio": {"TrioBot", "TrioServer", "run", "serve"},
        "meetstream_live.adapters.asgi": {"ASGIApp", "RECOMMENDED_MAX_MESSAGE_SIZE"},
        "meetstream_live.adapters": {
            "ConnectionInfo", "HTTPAnswer", "HTTPHandler", "Handler", "HandlerFactory",
            "HandshakeFailed", "ServerOptions", "tune_allocator",
        },
    }
    for module, names in expected.items():
        assert names <= set(importlib.import_module(module).__all__), module
