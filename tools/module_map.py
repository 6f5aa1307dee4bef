"""Print the module map of src/lrkit at a git revision: module, lines, what it holds (the
first sentence of its docstring). ``python tools/module_map.py [REV]`` (default: the working
tree)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def files(rev: str | None) -> dict[str, str]:
    if rev is None:
        return {str(p.relative_to(ROOT)): p.read_text()
                for p in sorted((ROOT / "src/lrkit").rglob("*.py"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "src/lrkit"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
            for n in names if n.endswith(".py")}


def summary(source: str) -> str:
    doc = ast.get_docstring(ast.parse(source)) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first if len(first) <= 110 else first[:107] + "..."


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else None
    found = files(rev)
    total = 0
    for name, source in sorted(found.items()):
        lines = source.count("\n")
        total += lines
        module = name[len("src/"):-len(".py")].replace("/", ".").removesuffix(".__init__")
        print(f"{module:34s} {lines:5d}  {summary(source)}")
    print(f"{len(found)} modules, {total} lines")


if __name__ == "__main__":
    main()
