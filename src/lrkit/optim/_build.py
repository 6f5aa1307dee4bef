"""Compile a C++ source once per machine into lrkit's cache directory (the kernels of
``_kernel`` and the extension of ``_native``)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """``$LRKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lrkit``, else ``~/.cache/lrkit``."""
    root = os.environ.get("LRKIT_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lrkit"


def compiler() -> str | None:
    """``$CXX``, else the first of g++, c++, clang++ on the PATH, else None."""
    return os.environ.get("CXX") or next(
        (c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def compiled(src: Path, name: str, suffix: str, args: list[str], key_parts: list[str],
             timeout: float = 300) -> Path:
    """``src`` compiled with ``compiler() args`` (``{src}`` and ``{out}`` in ``args`` stand
    for the source and the output) to ``cache_dir()/NAME_KEY SUFFIX``, where KEY hashes
    the source, the arguments and ``key_parts``; reused if it is already there. Raises
    OSError or subprocess.SubprocessError (with the compiler's stderr) if it fails."""
    cxx = compiler()
    if cxx is None:
        raise OSError("no C++ compiler ($CXX, g++, c++ or clang++)")
    key = hashlib.sha256("\0".join(
        [src.read_text(), " ".join(args), cxx, *key_parts]).encode()).hexdigest()[:16]
    out = cache_dir() / f"{name}_{key}{suffix}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=out.parent)
    os.close(fd)
    try:
        cmd = [cxx] + [a.replace("{src}", str(src)).replace("{out}", tmp) for a in args]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
        os.replace(tmp, out)  # atomic: concurrent builds (pytest -n) are harmless
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
