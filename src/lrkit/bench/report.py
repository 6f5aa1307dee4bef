"""The arena's report: from a results file to a Markdown page and one self-contained HTML
page (figures embedded as PNG).

How results are read:

- A *setting* is one (task, method, lr), its seeds pooled. Its score is the mean of the
  final metric in loss form (the metric, or the error rate 1 - accuracy), infinite when
  any seed diverged: a rate that diverges on one seed of the pair is no safe choice.
- A method's *entry* on a task is its best setting (lowest score); leaderboards rank the
  entries. A tuned method picks its best lr on the very metric it is ranked by, as grid
  searches do; an untuned method has one setting.
- *Shortfall* (the summary's colour) puts tasks on one scale:
  ``log(score / best) / log(start / best)``, the share of the progress in log terms from
  the untrained model (``start``) to the task's best entry that a method misses; 0 is
  the best, 1 no better than not training.
- *Performance profiles* (Dolan & More 2002, as AlgoPerf scores training algorithms): for
  each task, a method's cost to reach the target divided by the fastest method's; rho(tau)
  is the fraction of tasks on which that ratio is at most tau. The score is the area under
  rho on [1, 4] over 3 (AlgoPerf's): 1 means fastest everywhere. A cell's cost to target
  is ``steps_to_target / steps`` times the run's compute, plus any compute spent before
  training (``info["overhead"]``: a self-tuning method's range test and probes), the
  median over seeds. Two views of it (``PROFILES``):

  - "time" (the default): what reaching the target cost the method, its choice of lr
    included. A tuned method is charged its whole lr grid: its number of lr cells times
    the cost of its fastest cell, as if the grid ran its cells side by side until the
    first one met the target (the least any grid search can spend to know it has). An
    untuned or self-tuning method is charged its own run: its compute holds what it spent
    choosing.
  - "time_oracle": the fastest cell's cost alone, as if the best lr had been known in
    advance (AlgoPerf's external-tuning view; what the report showed before issue 14).

  A third profile ("final") does the same for the final score.
"""
from __future__ import annotations

import base64
import math
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lrkit import _checks as C
from lrkit.bench import results as R

TAU_MAX = 4.0
#: the performance profiles: kind -> what it measures (see the module docstring)
PROFILES = {
    "time": "time to target, tuned methods charged their whole lr grid",
    "time_oracle": "time to target, oracle: the best cell only",
    "final": "final metric",
}


# -- aggregation -----------------------------------------------------------------------------
def loss_form(value: float, higher_is_better: bool) -> float:
    if not math.isfinite(value):
        return math.inf
    return 1.0 - value if higher_is_better else value


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return statistics.fmean(vals) if vals and len(vals) == len(values) else math.nan


@dataclass
class Setting:
    """One (task, method, lr), its seeds pooled."""

    rows: list[R.Row]

    @property
    def lr(self) -> float:
        return self.rows[0].lr

    @property
    def diverged(self) -> int:
        return sum(r.diverged for r in self.rows)

    @property
    def score(self) -> float:
        if self.diverged:
            return math.inf
        return _mean([loss_form(r.final, r.higher_is_better) for r in self.rows])

    @property
    def final(self) -> float:
        return math.nan if self.diverged else _mean([r.final for r in self.rows])

    @property
    def final_range(self) -> tuple[float, float]:
        vals = [r.final for r in self.rows]
        return min(vals), max(vals)

    @property
    def half(self) -> float:
        return _mean([r.half for r in self.rows])

    @property
    def reached(self) -> int:
        """Seeds whose final metric meets the target."""
        return sum(r.reached for r in self.rows)

    @property
    def steps_to_target(self) -> float:
        """Median over seeds (inf where most never reached the target)."""
        return float(np.median([math.inf if r.steps_to_target is None else r.steps_to_target
                                for r in self.rows]))

    @property
    def cost_to_target(self) -> float:
        """Median over seeds of the compute, in runs, spent until the target was met."""
        costs = []
        for r in self.rows:
            if r.steps_to_target is None:
                costs.append(math.inf)
                continue
            overhead = float(r.info.get("overhead", 0.0))
            costs.append(overhead + (r.compute - overhead) * r.steps_to_target / r.steps)
        return float(np.median(costs))

    @property
    def compute(self) -> float:
        return statistics.fmean(r.compute for r in self.rows)

    @property
    def wall_time(self) -> float:
        return statistics.fmean(r.wall_time for r in self.rows)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The metric curve, the mean over seeds at the steps all seeds evaluated."""
        steps = sorted(set.intersection(*(set(r.eval_steps) for r in self.rows)))
        values = [[dict(zip(r.eval_steps, r.metrics))[s] for r in self.rows] for s in steps]
        return np.asarray(steps), np.asarray([np.mean(v) for v in values])


@dataclass
class Entry:
    """A method on a task: all its settings and the best of them."""

    method: str
    label: str
    family: str
    probe: str
    tuned: bool
    settings: list[Setting]

    @property
    def best(self) -> Setting:
        return min(self.settings, key=lambda s: (s.score, s.lr))

    @property
    def score(self) -> float:
        return self.best.score

    @property
    def diverged_lrs(self) -> int:
        return sum(1 for s in self.settings if s.diverged)

    @property
    def cells(self) -> int:
        """The runs (per seed) it spent choosing its setting: its lr grid's cells when
        tuned, else 1 (a self-tuning method's search is in its run's compute)."""
        return len(self.settings) if self.tuned else 1

    @property
    def oracle_cost_to_target(self) -> float:
        """The cost to target of its fastest setting alone (runs of compute)."""
        return min(s.cost_to_target for s in self.settings)

    @property
    def cost_to_target(self) -> float:
        """What reaching the target cost it, the choice of lr included: ``cells`` times
        the fastest setting's cost (a tuned method pays its whole grid)."""
        return self.cells * self.oracle_cost_to_target

    @property
    def seeds(self) -> int:
        return max(len(s.rows) for s in self.settings)

    @property
    def at_edge(self) -> bool:
        """Whether the best lr is the smallest or largest of a tuned grid (the best may lie
        beyond it)."""
        lrs = [s.lr for s in self.settings]
        return self.tuned and len(lrs) > 2 and self.best.lr in (min(lrs), max(lrs))


@dataclass
class TaskResult:
    name: str
    metric: str
    higher_is_better: bool
    target: float
    steps: int
    start: float  # the untrained model's metric (median over seeds)
    entries: list[Entry]  # best first
    range_tests: dict[str, float] = field(default_factory=dict)  # probe: median suggestion

    @property
    def best_score(self) -> float:
        return min(e.score for e in self.entries)

    def shortfall(self, entry: Entry) -> float:
        best, score = self.best_score, entry.score
        start = loss_form(self.start, self.higher_is_better)
        if not math.isfinite(score):
            return 1.0
        if not math.isfinite(best) or score <= best:
            return 0.0
        best = max(best, 1e-300)
        if start <= best:
            return 1.0
        return float(min(1.0, math.log(score / best) / math.log(start / best)))


@dataclass
class Arena:
    tasks: list[TaskResult]
    methods: list[tuple[str, str, str]]  # (name, label, family) in table order
    rows: int
    wall_time: float  # summed over cells
    seeds: int
    notes: list[str] = field(default_factory=list)

    def entry(self, task: TaskResult, method: str) -> Entry | None:
        return next((e for e in task.entries if e.method == method), None)

    def grid_best(self, task: TaskResult, probe: str) -> Entry | None:
        """The best tuned entry of an optimizer (``probe``: "Adam()"...) on a task: the best
        cell of its lr x schedule grid, what a self-tuning method is measured against."""
        return next((e for e in task.entries if e.tuned and e.probe == probe), None)

    def mean_shortfall(self, method: str) -> float:
        vals = [t.shortfall(e) for t in self.tasks if (e := self.entry(t, method))]
        return statistics.fmean(vals) if vals else math.nan

    def wins(self, method: str) -> int:
        return sum(1 for t in self.tasks if t.entries and t.entries[0].method == method)

    def targets(self, method: str) -> tuple[int, int]:
        """(tasks whose target its best setting met on every seed, tasks it ran)."""
        got = ran = 0
        for t in self.tasks:
            e = self.entry(t, method)
            if e is not None:
                ran += 1
                got += e.best.reached == len(e.best.rows) and e.best.score < math.inf
        return got, ran

    def ratios(self, kind: str) -> tuple[dict[str, list[float]], list[str]]:
        """Per method, its performance ratio on each task (``kind``, one of ``PROFILES``:
        "time": cost to target with a tuned method charged its grid; "time_oracle": its
        best cell's alone; "final": score), and the tasks used (a task no method met the
        target on says nothing about time)."""
        C.choice("Arena.ratios()", "kind", kind, PROFILES)
        out: dict[str, list[float]] = {m: [] for m, _, _ in self.methods}
        used = []
        for t in self.tasks:
            values = {e.method: (e.cost_to_target if kind == "time" else
                                 e.oracle_cost_to_target if kind == "time_oracle" else e.score)
                      for e in t.entries}
            finite = [v for v in values.values() if math.isfinite(v)]
            if not finite:
                continue
            used.append(t.name)
            best = max(min(finite), 1e-300)
            for m in out:
                v = values.get(m, math.inf)
                out[m].append(v / best if math.isfinite(v) else math.inf)
        return out, used

    def profile_score(self, method: str, kind: str) -> float:
        ratios, used = self.ratios(kind)
        if not used:
            return math.nan
        taus = np.linspace(1.0, TAU_MAX, 301)
        rho = R.profile(ratios[method], taus)
        area = float(np.sum((rho[1:] + rho[:-1]) / 2 * np.diff(taus)))
        return area / (TAU_MAX - 1.0)

    def ranking(self) -> list[tuple[str, str, str]]:
        """Methods by mean shortfall, then by wins."""
        return sorted(self.methods, key=lambda m: (self.mean_shortfall(m[0]), -self.wins(m[0])))


def summarize(rows: Sequence[R.Row], range_tests: Sequence[dict[str, Any]] = ()) -> Arena:
    """Aggregate rows (of one or several budgets) into the report's tables."""
    from lrkit.bench.methods import METHODS
    from lrkit.bench.tasks import HELD_OUT, TASKS

    notes: list[str] = []
    by_task: dict[str, list[R.Row]] = defaultdict(list)
    for r in rows:
        by_task[r.task].append(r)
    known = [*TASKS, *HELD_OUT]  # the arena's tasks, then the held-out ones
    task_order = sorted(by_task, key=lambda t: (known.index(t) if t in known else 99, t))
    method_order = {name: i for i, name in enumerate(METHODS)}
    seen: dict[str, tuple[str, str, str]] = {}
    tasks = []
    for t in task_order:
        budgets = Counter(r.steps for r in by_task[t])
        steps = max(budgets, key=lambda s: (budgets[s], s))
        if len(budgets) > 1:
            others = ", ".join(str(s) for s in sorted(budgets) if s != steps)
            notes.append(f"{t}: reporting the {steps}-step runs; rows with {others} steps "
                         "left out")
        task_rows = [r for r in by_task[t] if r.steps == steps]
        groups: dict[str, dict[float, list[R.Row]]] = defaultdict(lambda: defaultdict(list))
        for r in task_rows:
            groups[r.method][r.lr].append(r)
        entries = []
        for m, by_lr in groups.items():
            first = next(iter(by_lr.values()))[0]
            settings = [Setting(sorted(v, key=lambda r: r.seed)) for _, v in sorted(by_lr.items())]
            entries.append(Entry(m, first.label, first.family, first.optimizer, first.tuned,
                                 settings))
            seen.setdefault(m, (m, first.label, first.family))
        entries.sort(key=lambda e: (e.score, method_order.get(e.method, 999)))
        first = task_rows[0]
        start = float(np.median([r.metrics[0] for r in task_rows if r.metrics]))
        suggestions: dict[str, list[float]] = defaultdict(list)
        for rt in range_tests:
            if rt["task"] == t and math.isfinite(rt["suggestion"]):
                suggestions[rt["probe"]].append(rt["suggestion"])
        tasks.append(TaskResult(t, first.metric, first.higher_is_better, first.target, steps,
                                start, entries,
                                {p: float(np.median(v)) for p, v in suggestions.items()}))
    methods = sorted(seen.values(), key=lambda m: (method_order.get(m[0], 999), m[0]))
    seeds = max((e.seeds for t in tasks for e in t.entries), default=0)
    wall = sum(r.wall_time for r in rows if math.isfinite(r.wall_time))
    return Arena(tasks, methods, len(rows), wall, seeds, notes)


# -- text ------------------------------------------------------------------------------------
def fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def leaderboard(task: TaskResult) -> tuple[list[str], list[list[str]]]:
    seeds = max((e.seeds for e in task.entries), default=1)
    head = ["#", "method", "best lr", task.metric, *(["range over seeds"] if seeds > 1 else []),
            "at half budget", "steps to target", "target met", "diverged lrs", "runs to tune",
            "cost to target (charged)", "cost to target (oracle)", "compute", "wall s"]
    body = []
    for i, e in enumerate(task.entries, 1):
        b = e.best
        lo, hi = b.final_range
        if e.tuned:
            lr = fmt(b.lr, 3) + (" (grid edge)" if e.at_edge else "")
        else:
            lr = f"{fmt(b.lr, 3)} (untuned)"
        stt = b.steps_to_target
        body.append([
            str(i) if math.isfinite(e.score) else "-", e.label, lr,
            "diverged" if b.diverged else fmt(b.final),
            *([f"{fmt(lo)} .. {fmt(hi)}"] if seeds > 1 else []),
            fmt(b.half), fmt(stt) if math.isfinite(stt) else "-",
            f"{b.reached}/{len(b.rows)}", f"{e.diverged_lrs}/{len(e.settings)}",
            str(len(e.settings)), _cost(e.cost_to_target), _cost(e.oracle_cost_to_target),
            fmt(b.compute, 3), fmt(b.wall_time, 3)])
    return head, body


def _cost(value: float) -> str:
    return fmt(value, 3) if math.isfinite(value) else "-"


def summary_table(arena: Arena) -> tuple[list[str], list[list[str]]]:
    head = ["method", "mean shortfall", "tasks won", "targets met",
            "time-to-target profile (grid charged)", "time-to-target profile (oracle: best "
            "cell only)", "final-metric profile"]
    body = []
    for m, label, _ in arena.ranking():
        got, ran = arena.targets(m)
        body.append([label, fmt(arena.mean_shortfall(m), 3), str(arena.wins(m)),
                     f"{got}/{ran}", fmt(arena.profile_score(m, "time"), 3),
                     fmt(arena.profile_score(m, "time_oracle"), 3),
                     fmt(arena.profile_score(m, "final"), 3)])
    return head, body


def findings(arena: Arena) -> list[str]:
    """A few plain sentences read off the tables."""
    if not arena.tasks:
        return []
    out = []
    ranking = arena.ranking()
    top = ranking[0]
    out.append(f"Best overall (lowest mean shortfall, {fmt(arena.mean_shortfall(top[0]), 2)}): "
               f"{top[1]}; it wins {arena.wins(top[0])} of {len(arena.tasks)} tasks.")
    out.append("Task winners: " + "; ".join(
        f"{t.name}: {t.entries[0].label} ({fmt(t.entries[0].best.final)})"
        for t in arena.tasks if t.entries) + ".")
    names = [m[0] for m in ranking]
    if "adam_default" in names:
        got, ran = arena.targets("adam_default")
        rank = names.index("adam_default") + 1
        out.append(f"The default choice (Adam at 1e-3, constant, untuned) ranks {rank} of "
                   f"{len(names)} and meets {got} of {ran} targets.")
    by_schedule: dict[str, list[float]] = defaultdict(list)
    for t in arena.tasks:
        for e in t.entries:
            sched = e.method.split("_", 1)[1] if e.family in ("sgd", "adam") else None
            if sched:
                by_schedule[sched].append(t.shortfall(e))
    if by_schedule:
        order = sorted(by_schedule, key=lambda s: statistics.fmean(by_schedule[s]))
        out.append("Schedules by mean shortfall over both optimizers and all tasks: " +
                   ", ".join(f"{s} {statistics.fmean(by_schedule[s]):.2f}" for s in order) + ".")
    return out


def _md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
    return "\n".join(lines)


# -- the pages ---------------------------------------------------------------------------------
def write_report(results: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` for a results file (or a
    directory holding ``results.csv``) into ``out`` (default: beside the results); returns
    the HTML page's path."""
    from lrkit import plot as P
    from lrkit.bench import figures as F

    C.path("write_report()", "results", results)
    if out is not None:
        C.path("write_report()", "out", out)
    path = R.results_path(results)
    if not path.exists():
        raise ValueError(f"write_report(): results must be a results file, or a directory "
                         f"holding {R.RESULTS}, got {str(results)!r}: {path} does not exist")
    rows = R.load_rows(path)
    if not rows:
        raise ValueError(f"report: {path} holds no finished cells")
    arena = summarize(rows, R.load_range_tests(path))
    out = Path(out) if out is not None else path.parent
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)

    pictures: dict[str, Path] = {}
    pictures["summary"] = P.save(F.plot_arena_summary(arena), str(figures / "summary.png"))
    pictures["profiles"] = P.save(F.plot_performance_profiles(arena),
                                  str(figures / "profiles.png"))
    for t in arena.tasks:
        pictures[t.name] = P.save(F.plot_task(arena, t), str(figures / f"task_{t.name}.png"))
    pictures = {k: Path(v) for k, v in pictures.items()}

    sections = _sections(arena, path)
    md = _markdown(sections, pictures, out)
    (out / "report.md").write_text(md, encoding="utf-8")
    page = _html(sections, pictures)
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return html_path


def _sections(arena: Arena, path: Path) -> list[dict[str, Any]]:
    from lrkit.bench.methods import METHODS

    n_tasks, n_methods = len(arena.tasks), len(arena.methods)
    intro = (f"{arena.rows} runs from `{path}`: {n_tasks} tasks x {n_methods} methods x "
             f"{arena.seeds} paired seed{'s' if arena.seeds != 1 else ''}, "
             f"{arena.wall_time / 60:.1f} minutes of training summed over runs; written "
             f"{time.strftime('%Y-%m-%d %H:%M')}.")
    sections: list[dict[str, Any]] = [{
        "title": "Summary", "text": [intro, *findings(arena), *arena.notes],
        "picture": "summary", "table": summary_table(arena),
        "caption": "Colour: shortfall, log(score / best) / log(start / best) on each task "
                   "(0 = the task's best method, 1 = no better than the untrained model); "
                   "text: the best setting's final metric, bold where it met the target on "
                   "every seed, 'div' where every lr diverged. Right: performance profile of "
                   "the cost to reach each task's target, a tuned method charged its whole lr "
                   "grid (the oracle view, its best cell only, is in the profiles and the "
                   "table)."}]
    sections.append({
        "title": "Performance profiles", "picture": "profiles", "text": [
            "For each task, a method's cost to reach the target (in runs of compute) or its "
            "best final score, divided by the best method's; the curve is the fraction of "
            "tasks within a factor tau of the best. Higher and further left is better; the "
            "score in the legend is the area on [1, 4] / 3.",
            "Left, grid charged (the default): a tuned method pays for its whole lr grid, "
            "its number of lr cells times the cost of its fastest cell (the grid's cells run "
            "side by side until the first meets the target); an untuned or self-tuning "
            "method pays its own run, whose compute includes what it spent choosing its lr "
            "(range test, probes). Middle, oracle: the fastest cell's cost alone, as if the "
            "best lr had been known in advance. Right: the final metric."]})
    for t in arena.tasks:
        direction = "higher" if t.higher_is_better else "lower"
        suggestions = "; ".join(f"{p}: {fmt(v, 3)}" for p, v in t.range_tests.items())
        text = [f"{t.steps} steps; metric `{t.metric}` ({direction} is better), target "
                f"{fmt(t.target)}; untrained model: {fmt(t.start)}."]
        if suggestions:
            text.append(f"Range-test suggestions (find_lr, median over seeds): {suggestions}.")
        sections.append({
            "title": f"Task: {t.name}", "text": text, "table": leaderboard(t),
            "picture": t.name,
            "caption": "Left: the metric during training, best setting of each method "
                       "(mean over seeds). Right: final metric against peak lr for each "
                       "tuned method (x: diverged; ^: worse than the untrained model, drawn "
                       "on the rim), the range test's suggestion as a "
                       "vertical line; untuned methods as stars (at their lr) or horizontal "
                       "lines; grey dashes: the target."})
    body = []
    for name, label, _ in arena.methods:
        m = METHODS.get(name)
        if m is None:
            body.append([label, name, "", ""])
            continue
        how = (f"tuned over the {m.grid} grid" if m.grid else "chooses its own lr"
               if m.runner is not None and m.family == "auto"
               else f"untuned, lr {fmt(m.lr or 1.0, 3)}")
        body.append([label, name, f"{m.setting(0.1 if m.grid else (m.lr or 1.0), 1000)}", how
                     + (f"; {m.note}" if m.note else "")])
    sections.append({
        "title": "Methods", "table": (["method", "name", "setting (lr 0.1 or its own, "
                                       "1000 steps)", "learning rate"], body),
        "text": ["Schedules are shaped from each task's budget (lrkit.schedules.family): "
                 "5% linear warmup (one_cycle: its own 30%), step_based falls ten-fold at a "
                 "third and two thirds, exponential and time_based fall to 1% of the peak by "
                 "the end, cosine, linear and wsd (last 20%) to 0."]})
    return sections


def _markdown(sections: list[dict[str, Any]], pictures: dict[str, Path], out: Path) -> str:
    lines = ["# lrkit arena report", ""]
    for s in sections:
        lines += [f"## {s['title']}", ""]
        for para in s.get("text", []):
            lines += [para, ""]
        if s.get("picture"):
            rel = os.path.relpath(pictures[s["picture"]], out)
            lines += [f"![{s['title']}]({rel})", ""]
            if s.get("caption"):
                lines += [f"*{s['caption']}*", ""]
        if s.get("table"):
            lines += [_md_table(*s["table"]), ""]
    return "\n".join(lines)


def _html(sections: list[dict[str, Any]], pictures: dict[str, Path]) -> str:
    """The page: ``sections`` with their pictures embedded (one self-contained file)."""
    from lrkit.pages import render

    shown = []
    for s in sections:
        image = None
        if s.get("picture"):
            image = base64.b64encode(pictures[s["picture"]].read_bytes()).decode("ascii")
        shown.append({"title": s["title"], "text": s.get("text", []), "image": image,
                      "caption": s.get("caption"), "table": s.get("table")})
    return render("arena.html", sections=shown)
