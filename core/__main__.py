"""``python -m meetstream_live``: the ``meetstream-live`` command.

The one exception to the core's rule that it never reaches an adapter, and why it is safe:
Python runs this file only for ``python -m meetstream_live`` (when the program is wanted,
not the library); nothing imports it, so ``import meetstream_live`` still loads no adapter,
no event loop, no I/O. It hands over to the command line by name (``runpy``) instead of
importing it, and does nothing else. ``tests/core/test_purity.py`` and ``tests/test_layers.py``
allow exactly this file and exactly this hand-over.
"""

import runpy

runpy.run_module("meetstream_live.adapters.cli", run_name="__main__", alter_sys=True)
