"""The arena's results: one tidy CSV file, one row per finished cell, appended to as cells
finish and read back to resume.

A row is one line (curves are JSON lists in their columns), written with a single
``write`` on a file opened for appending and flushed to disk before the next cell is
recorded. A bench killed mid-write leaves at most a partial last line; ``ResultsFile``
drops it on opening, so the file is never corrupt and no finished cell is lost or
repeated. A row's key is (task, method, seed, setting): the setting text holds the lr and
the budget, so a changed method definition or budget makes new cells rather than reusing
old ones; reading keeps the last row of each (task, method, lr, seed, steps).

``range_tests.csv`` beside it holds the range test of each (task, optimizer, seed) whose
suggestion the report marks on the sensitivity curves.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import lrkit

RESULTS = "results.csv"
RANGE_TESTS = "range_tests.csv"

RUN_COLUMNS = (
    "task", "method", "label", "family", "optimizer", "schedule", "grid", "lr", "seed",
    "steps", "metric", "higher_is_better", "target", "final", "half", "steps_to_target",
    "reached", "diverged", "wall_time", "compute", "setting", "eval_steps", "metrics",
    "losses", "info", "lrkit", "finished",
)
RANGE_COLUMNS = ("task", "probe", "seed", "suggestion", "rule", "suggestions", "stop_reason",
                 "wall_time", "lrkit", "finished")
LOSS_POINTS = 50


# -- value encoding -------------------------------------------------------------------------
def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_finite(value), separators=(",", ":"))
    return str(value)


def _finite(value: Any) -> Any:
    """JSON-able: non-finite floats become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _float(text: str) -> float:
    return math.nan if text == "" else float(text)


def _json(text: str, default: Any) -> Any:
    return default if text == "" else json.loads(text)


def _floats(values: Iterable[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def downsample(values: Sequence[float], points: int = LOSS_POINTS) -> list[float]:
    """Means over ``points`` equal windows (all values when there are fewer)."""
    if len(values) <= points:
        return [float(v) for v in values]
    edges = np.linspace(0, len(values), points + 1).astype(int)
    arr = np.asarray(values, dtype=np.float64)
    return [float(arr[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])]


# -- rows -------------------------------------------------------------------------------
@dataclass
class Row:
    """One finished cell, as the report reads it."""

    task: str
    method: str
    label: str
    family: str
    optimizer: str
    schedule: str
    grid: str
    lr: float
    seed: int
    steps: int
    metric: str
    higher_is_better: bool
    target: float
    final: float
    half: float
    steps_to_target: int | None
    reached: bool
    diverged: bool
    wall_time: float
    compute: float
    setting: str
    eval_steps: list[int]
    metrics: list[float]
    losses: list[float]
    info: dict[str, Any]
    lrkit: str = ""
    finished: str = ""

    @property
    def tuned(self) -> bool:
        """Whether this is a point of an lr grid (else an untuned method's one setting)."""
        return bool(self.grid)

    @classmethod
    def from_record(cls, rec: dict[str, str]) -> Row:
        stt = rec.get("steps_to_target", "")
        return cls(
            task=rec["task"], method=rec["method"], label=rec.get("label") or rec["method"],
            family=rec.get("family", ""), optimizer=rec.get("optimizer", ""),
            schedule=rec.get("schedule", ""), grid=rec.get("grid", ""),
            lr=_float(rec.get("lr", "")), seed=int(rec["seed"]), steps=int(rec["steps"]),
            metric=rec.get("metric", ""), higher_is_better=rec.get("higher_is_better") == "1",
            target=_float(rec.get("target", "")), final=_float(rec["final"]),
            half=_float(rec.get("half", "")), steps_to_target=int(stt) if stt else None,
            reached=rec.get("reached") == "1", diverged=rec.get("diverged") == "1",
            wall_time=_float(rec.get("wall_time", "")),
            compute=_float(rec.get("compute", "")) if rec.get("compute") else 1.0,
            setting=rec.get("setting", ""),
            eval_steps=[int(v) for v in _json(rec.get("eval_steps", ""), [])],
            metrics=_floats(_json(rec.get("metrics", ""), [])),
            losses=_floats(_json(rec.get("losses", ""), [])),
            info=_json(rec.get("info", ""), {}), lrkit=rec.get("lrkit", ""),
            finished=rec.get("finished", ""))


def run_record(task, method, lr: float, seed: int, run) -> dict[str, Any]:
    """The CSV record of a finished cell (``task``: a Task, ``method``: a Method, ``run``: a
    ``lrkit.bench.Run``)."""
    return {
        "task": task.name, "method": method.name, "label": method.label,
        "family": method.family, "optimizer": method.probe,
        "schedule": method.schedule or "", "grid": method.grid or "", "lr": float(lr),
        "seed": seed, "steps": run.steps, "metric": task.metric,
        "higher_is_better": task.higher_is_better, "target": float(task.target),
        "final": float(run.final), "half": float(run.half),
        "steps_to_target": run.steps_to_target, "reached": task.reached(run.final),
        "diverged": run.diverged, "wall_time": round(run.wall_time, 4),
        "compute": float(run.compute), "setting": method.setting(lr, run.steps),
        "eval_steps": run.eval_steps, "metrics": run.metrics,
        "losses": downsample(run.losses), "info": run.info,
        "lrkit": lrkit.__version__, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def run_key(rec: dict[str, Any]) -> tuple[str, str, int, str]:
    return (str(rec["task"]), str(rec["method"]), int(rec["seed"]), str(rec["setting"]))


def range_key(rec: dict[str, Any]) -> tuple[str, str, int]:
    return (str(rec["task"]), str(rec["probe"]), int(rec["seed"]))


# -- the file ---------------------------------------------------------------------------
class ResultsFile:
    """An append-only CSV file of records with a fixed set of columns.

    Opening repairs what a kill can leave (a partial last line) and, when the file was
    written with other columns, rewrites it atomically with these ones (missing values
    empty). ``add`` appends one record with one ``write`` call and flushes it to disk.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], *,
                 repair: bool = True) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self.records: list[dict[str, str]] = self._read(repair)

    def _read(self, repair: bool) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # killed mid-write: drop the partial line
            if repair:
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
            data = data[:cut]
        reader = csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace"),
                                            newline=""))
        header = tuple(reader.fieldnames or ())
        records = [r for r in reader if _complete(r)]
        if repair and data and header != self.columns:
            self._rewrite(records)
        return [{c: r.get(c) or "" for c in self.columns} for r in records]

    def _rewrite(self, records: list[dict[str, str]]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            writer.writeheader()
            for r in records:
                writer.writerow({c: r.get(c) or "" for c in self.columns})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _line(self, values: Sequence[str]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue().encode("utf-8")

    def add(self, record: dict[str, Any]) -> None:
        """Append one record (a dict over the columns) and flush it to disk."""
        values = [_encode(record.get(c)) for c in self.columns]
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = (self._line(self.columns) if new else b"") + self._line(values)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(dict(zip(self.columns, values)))


def _complete(record: dict) -> bool:
    """A whole row: as many fields as the header, and a task."""
    return None not in record and None not in record.values() and bool(record.get("task"))


def results_path(path: str | os.PathLike) -> Path:
    """``path`` itself for a file, ``path/results.csv`` for a directory."""
    p = Path(path)
    return p / RESULTS if p.is_dir() or not p.suffix else p


def load_rows(path: str | os.PathLike) -> list[Row]:
    """The rows of a results file (or of ``results.csv`` in a directory), the last of each
    (task, method, lr, seed, steps) kept."""
    p = results_path(path)
    if not p.exists():
        raise FileNotFoundError(f"no results file at {p}")
    rows: dict[tuple, Row] = {}
    for rec in ResultsFile(p, RUN_COLUMNS, repair=False).records:
        row = Row.from_record(rec)
        rows[(row.task, row.method, repr(row.lr), row.seed, row.steps)] = row
    return list(rows.values())


def load_range_tests(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The range tests beside a results file: task, probe, seed, suggestion."""
    p = results_path(path).parent / RANGE_TESTS
    if not p.exists():
        return []
    out = []
    for rec in ResultsFile(p, RANGE_COLUMNS, repair=False).records:
        out.append({"task": rec["task"], "probe": rec["probe"], "seed": int(rec["seed"]),
                    "suggestion": _float(rec["suggestion"]), "rule": rec["rule"],
                    "suggestions": _json(rec["suggestions"], {}),
                    "stop_reason": rec["stop_reason"]})
    return out


def profile(ratios: Sequence[float], taus: np.ndarray) -> np.ndarray:
    """rho(tau): the fraction of ``ratios`` at most each tau."""
    r = np.asarray(ratios, dtype=np.float64)
    if r.size == 0:
        return np.zeros_like(taus)
    return (r[None, :] <= taus[:, None] * (1 + 1e-12)).mean(axis=1)
