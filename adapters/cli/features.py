"""What ``meetstream-live serve`` is made of beyond the recorder: each :class:`Feature` (object
storage, the live view, the message bus...) declares its options and plugs its sinks, HTTP
routes and viewer endpoint into the server through a :class:`ServeContext`. ``serve`` knows
features only through this interface, so adding one is a module in ``cli/``, listed in
:data:`FEATURES`, and nothing else.

The order of a serve start, as a feature sees it:

1. its options are resolved with the others (flags > environment > config file > defaults);
2. :meth:`Feature.configure` is called once the output directory is checked and recovered,
   before the port is bound and before any bot connects: it adds sinks, routes, readiness
   checks and closers to the context, and raises :class:`~.options.UsageError` for what must
   stop the start (wrong credentials, a missing bucket, a server that cannot be reached);
3. the server runs; at the end the context's closers run, in reverse order.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meetstream_live.adapters import HTTPHandler, ViewerFactory
from meetstream_live.adapters.recording.sinks import Sink

from .options import Option, Settings

__all__ = ["FEATURES", "Feature", "ServeContext", "load_features"]


@dataclass
class ServeContext:
    """What a feature may add to the server it is part of."""

    settings: Settings
    #: The recordings directory (resolved, writable, recovered).
    output: Path
    #: The receiver's metrics (``meetstream_live.adapters.recording.metrics.Metrics``).
    metrics: Any
    #: Sinks the recorder publishes to, after the file sink.
    sinks: list[Sink] = field(default_factory=list)
    #: Plain HTTP routes on the bots' port: an exact path, or a prefix ending in ``/``.
    http_routes: dict[str, HTTPHandler] = field(default_factory=dict)
    #: Viewer WebSocket paths (``ServerConfig.viewer_paths`` patterns) and their factory.
    viewer_paths: list[str] = field(default_factory=list)
    viewer_factory: ViewerFactory | None = None
    #: Readiness checks for ``/readyz``: each returns ``(ready, why)``.
    readiness: list[Callable[[], tuple[bool, str]]] = field(default_factory=list)
    #: Asked when a stream starts that has no session here (``Recorder(continue_from=)``):
    #: a session another receiver began, to continue.
    continue_from: Callable[[tuple[str, str]], Any] | None = None
    #: What the recovery at this start finished (``FinishedRecording``: the parts a crash
    #: interrupted), for the features that publish them (the bus); empty in workers but 1.
    recovered: list[Any] = field(default_factory=list)
    #: Called at the end, in reverse order (stop threads, flush, close connections).
    closers: list[Callable[[], None]] = field(default_factory=list)
    #: 0 in a single process; 1..N in the workers of ``--workers`` (features that own
    #: something process-wide, a background uploader, run it once: in the parent or worker 1).
    worker: int = 0


class Feature:
    """A part of ``serve``. Subclass it in a module of ``cli/`` and list it in
    :data:`FEATURES`."""

    #: The name (the options' group in ``--help`` and ``docs/config.md``).
    name = "feature"
    #: Its options (their ``group`` is set to :attr:`name` when left at the default).
    options: tuple[Option, ...] = ()

    def enabled(self, settings: Settings) -> bool:
        """Whether the settings ask for this feature (it is configured only then)."""
        return True

    def configure(self, context: ServeContext) -> None:
        """Plug into the server (see the module)."""


#: The features of ``serve``, as ``module:attribute`` (imported when ``serve`` starts, so a
#: feature's dependencies load only where it is used).
FEATURES: tuple[str, ...] = (
    ".upload:UPLOAD",
    ".bus:BUS",
    ".live:LIVE",
)


def load_features() -> list[Feature]:
    features: list[Feature] = []
    for spec in FEATURES:
        module, _, attribute = spec.partition(":")
        feature = getattr(importlib.import_module(module, __package__), attribute)
        features.append(feature)
    return features
