"""Real outside components for the tests, each started on free loopback ports by a context
manager that waits until it is ready and stops it afterwards (see README.md here):

* ``s3_server()``: SeaweedFS's S3 gateway (``weed mini``), with stop()/start() keeping the data;
* ``nats_server()``: nats-server with JetStream, optionally a small ``max_payload``;
* ``haproxy(backends)``: HAProxy routing by a consistent hash of the path or ``?bot=``;
  ``backend_server(name)``: a trivial HTTP backend that answers its name;
* ``browser()`` / ``async_browser()``: Playwright on Debian's Chromium.

A component that is not installed skips the test with the reason, or fails it when CI=true.
"""

from ._browser import CHROMIUM_ARGS, artifacts_dir, async_browser, browser, chromium_executable
from ._haproxy import BackendServer, HAProxy, backend_server, haproxy, render_config
from ._nats import NatsServer, nats_server, stream_messages
from ._proc import ServiceError, free_port, free_ports, in_ci, require_module, unavailable
from ._s3 import S3Server, s3_server

__all__ = [
    "CHROMIUM_ARGS",
    "BackendServer",
    "HAProxy",
    "NatsServer",
    "S3Server",
    "ServiceError",
    "artifacts_dir",
    "async_browser",
    "backend_server",
    "browser",
    "chromium_executable",
    "free_port",
    "free_ports",
    "haproxy",
    "in_ci",
    "nats_server",
    "render_config",
    "require_module",
    "s3_server",
    "stream_messages",
    "unavailable",
]
