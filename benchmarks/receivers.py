"""Receivers that the benchmarks build at run time, never kept in the repository:

* the protocol document's two sample receivers (the websockets one and the Node ``ws`` one),
  taken verbatim from ``meetstream-live-video.md`` into a temporary directory: what users start
  from. The document is looked up in ``$MEETSTREAM_PROTOCOL_DOC``, then ``shared/protocol/``
  beside the repository; without it those peers are skipped, saying so;
* ``pip install .`` with no extra into a venv of its own (the plain install a user gets),
  made once per source tree (a stamp of the sources' hash) under the system temp dir.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import PEERS, ROOT

DOC_NAME = "meetstream-live-video.md"
#: (heading of the section, language of its first code block, file name to write it to).
DOC_SAMPLES = {
    "peer-doc-websockets": ("Server side — Python WebSocket receiver", "python", "server.py"),
    "peer-doc-node": ("Server side — Node.js WebSocket receiver", "javascript", "server.mjs"),
}
PLAIN_VENV = Path(tempfile.gettempdir()) / "meetstream-bench-plain"


def protocol_doc() -> Path | None:
    candidates = [os.environ.get("MEETSTREAM_PROTOCOL_DOC", ""),
                  str(ROOT.parent / "shared" / "protocol" / DOC_NAME),
                  f"/work/shared/protocol/{DOC_NAME}"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def doc_sample(text: str, heading: str, language: str) -> str | None:
    """The first ``language`` code block after the heading that contains ``heading``."""
    at = text.find(heading)
    if at < 0:
        return None
    match = re.compile(r"^```" + re.escape(language) + r"\n(.*?)^```", re.S | re.M).search(
        text, at)
    return match.group(1) if match else None


@functools.cache
def doc_peer(name: str) -> Path | str:
    """The sample receiver ``name`` written to a temporary file, or why it cannot be."""
    doc = protocol_doc()
    if doc is None:
        return f"the protocol document ({DOC_NAME}) is not here: its sample receivers are skipped"
    heading, language, filename = DOC_SAMPLES[name]
    code = doc_sample(doc.read_text("utf-8"), heading, language)
    if code is None:
        return f"no {language} block under '{heading}' in {doc}"
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    if language == "javascript":  # its `import ... from "ws"` resolves next to the file
        modules = PEERS / "node_modules"
        if not (modules / "ws").is_dir():
            return "run: npm ci --prefix benchmarks/peers (the sample imports ws)"
        (folder / "node_modules").symlink_to(modules)
    path = folder / filename
    path.write_text(code, "utf-8")
    return path


def _source_stamp() -> str:
    digest = hashlib.sha256()
    for top in ("core", "adapters"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(ROOT)).encode())
                digest.update(path.read_bytes())
    digest.update((ROOT / "pyproject.toml").read_bytes())
    return digest.hexdigest()


@functools.cache
def plain_install() -> Path | str:
    """``bin/`` of a venv with ``pip install .`` and no extra (made or reused), or why not."""
    stamp = _source_stamp()
    marker = PLAIN_VENV / "stamp"
    bindir = PLAIN_VENV / "bin"
    if marker.is_file() and marker.read_text() == stamp and (bindir / "meetstream-live").exists():
        return bindir
    shutil.rmtree(PLAIN_VENV, ignore_errors=True)
    build = Path(tempfile.mkdtemp(prefix="bench-plain-src-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PLAIN_VENV)], check=True,
                       capture_output=True)
        # A copy of the sources: `pip install .` must not write build/ or *.egg-info into the
        # shared working tree.
        for name in ("core", "adapters", "pyproject.toml", "README.md", "LICENSE"):
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, build / name,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, build / name)
        done = subprocess.run([str(bindir / "python"), "-m", "pip", "install", "-q", str(build)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return f"pip install . failed: {done.stderr[-500:]}"
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"could not make the plain venv: {exc}"
    finally:
        shutil.rmtree(build, ignore_errors=True)
    marker.write_text(stamp)
    return bindir
