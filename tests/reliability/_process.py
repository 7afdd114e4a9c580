"""A receiver (``_server.py``) in a subprocess: start it, talk to it, stop or kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
SERVER = HERE / "_server.py"


def env() -> dict[str, str]:
    """The environment of a child process that imports the test helpers."""
    paths = [str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


class ServerProcess:
    """``with ServerProcess(adapter, output, log, "--grace", "30") as server: server.port``.

    ``RELIABILITY_SERVER_ARGS`` (split on spaces) adds arguments to every server, e.g.
    ``--no-descriptor-defence`` to check that the tests fail without a defence.
    """

    def __init__(self, adapter: str, output: Path, log: Path, *args: str) -> None:
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115 (closed in stop/kill)
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), adapter, str(output), *args,
             *os.environ.get("RELIABILITY_SERVER_ARGS", "").split()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env=env(), start_new_session=True,
        )
        line = self._readline()
        assert line.startswith("port "), f"{line!r}; log: {self.logged()[-3000:]}"
        self.port = int(line.split()[1])

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def command(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._readline()

    def stats(self) -> tuple[int, int]:
        """``(rss bytes, open descriptors)`` of the server process, read from /proc."""
        pid = self.proc.pid
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return rss, len(os.listdir(f"/proc/{pid}/fd"))

    def logged(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """Graceful: end of input, then wait."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as an OOM killer or a power cut would (the whole process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            self.kill()
        else:
            self.stop()
