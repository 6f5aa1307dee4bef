"""MkDocs hook: every ```python block of a page runs when the site is built.

The blocks of one page run in order in one namespace, in a scratch directory of their
own, with matplotlib drawing off screen; what a block prints is shown under it, and a
block that raises fails the build, naming the page and the block. So an example in the
documentation cannot go stale: ``make docs`` (and the test that builds the site) would
stop on it.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import traceback

from mkdocs.exceptions import PluginError

BLOCK = re.compile(r"^```python\n(.*?)^```\n", flags=re.S | re.M)
MAX_OUTPUT = 4000


def run_blocks(markdown: str, where: str) -> str:
    """``markdown`` with each python block's printed output shown after it."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    namespace: dict = {"__name__": "__docs__"}
    pieces, end = [], 0
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="lrkit-docs-") as scratch:
        os.chdir(scratch)
        try:
            for i, match in enumerate(BLOCK.finditer(markdown), start=1):
                out = io.StringIO()
                try:
                    with contextlib.redirect_stdout(out):
                        exec(compile(match.group(1), f"{where} example {i}", "exec"),
                             namespace)
                except Exception as exc:
                    raise PluginError(f"{where}: example {i} failed: {exc!r}\n"
                                      f"{traceback.format_exc(limit=-3)}\n"
                                      f"{match.group(1)}") from exc
                pieces.append(markdown[end:match.end()])
                printed = out.getvalue().rstrip()
                if len(printed) > MAX_OUTPUT:
                    printed = printed[:MAX_OUTPUT] + "\n..."
                if printed:
                    pieces.append(f'\n```text title="Output"\n{printed}\n```\n')
                end = match.end()
        finally:
            os.chdir(here)
            _close_figures()
    return "".join(pieces) + markdown[end:]


def _close_figures() -> None:
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def on_page_markdown(markdown: str, page, config, files) -> str:
    return run_blocks(markdown, page.file.src_path)
