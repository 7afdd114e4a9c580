"""``python -m meetstream_live.adapters.cli``: the ``meetstream-live`` command."""

from __future__ import annotations

import contextlib
import sys

from meetstream_live.adapters.cli import main

with contextlib.suppress(BrokenPipeError):
    sys.exit(main())
