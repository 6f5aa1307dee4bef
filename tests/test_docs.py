"""The documentation site builds (``mkdocs build --strict``, as ``make docs``), and with it
every python example of every page runs (``docs/hooks.py``): an example that breaks, a
broken link or an unresolved API reference fails this test."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from hooks import BLOCK, run_blocks  # noqa: E402

pytestmark = pytest.mark.xdist_group("docs")


def test_the_site_builds_strictly_with_every_example_run(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "torch", "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    site = tmp_path / "site"
    pages = {p.relative_to(site).as_posix() for p in site.rglob("index.html")}
    for page in ("schedules/index.html", "arena/index.html", "api/index.html",
                 "integrations/lightning/index.html", "integrations/transformers/index.html"):
        assert page in pages
    api = (site / "api/index.html").read_text()
    assert 'id="lrkit.scheduler.Scheduler"' in api and 'id="lrkit.pilot.choose_lr"' in api
    schedules = (site / "schedules/index.html").read_text()
    assert "Output" in schedules and "warmup(cosine(0.0003, total=10000), steps=500)" in \
        schedules  # what the examples printed is on the page
    assert (site / "arena.png").exists()


def test_every_guide_page_has_examples_that_the_hook_finds():
    for page in ("schedules", "optimizers", "lr-free", "range-test", "tuning", "autopilot",
                 "trust", "arena", "integrations/lightning", "integrations/transformers"):
        assert BLOCK.search((ROOT / "docs" / f"{page}.md").read_text()), page


def test_a_failing_example_fails_the_build_naming_the_page():
    from mkdocs.exceptions import PluginError

    text = "intro\n\n```python\nx = 1\nprint(x + 1)\n```\n\n```python\n1 / 0\n```\n"
    with pytest.raises(PluginError, match=r"page.md: example 2 failed: ZeroDivisionError"):
        run_blocks(text, "page.md")
    shown = run_blocks(text.split("```python\n1 / 0")[0], "page.md")
    assert '```text title="Output"\n2\n```' in shown
