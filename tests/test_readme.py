"""Every Python example in the README runs, in order, in one namespace.

The README is the landing page (its quick start); the manual's examples live in the
documentation pages, whose python blocks ``tests/test_docs.py`` runs by building the site
(``docs/hooks.py``). Both are counted here, so the examples of the old README are still
accounted for."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks(path: Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 1  # the quick start
    docs = [b for page in sorted((ROOT / "docs").rglob("*.md")) for b in python_blocks(page)]
    assert len(docs) >= 17  # the old README's 17 examples moved there, with more


def test_readme_links_into_the_docs():
    text = README.read_text()
    for page in re.findall(r"\]\((docs/[^)#]+)\)", text):
        assert (ROOT / page).exists(), page
    assert "docs/index.md" in text and "docs/api.md" in text and "make docs" in text


def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README.md block {i}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message names the block
            raise AssertionError(f"README block {i} failed: {exc!r}\n{block}") from exc


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text
