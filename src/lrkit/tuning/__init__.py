"""``lrkit.tune`` (this package is ``lrkit.tuning``): search the learning rate and its
schedule with Optuna.

lrkit writes no search engine and no cluster scheduler of its own: it drives Optuna, with
a default search space for the learning rate (log-uniform, centred on the range test's
suggestion when there is one), the schedule family, the warmup fraction and the momentum
(or Adam's beta1); trials report their metric as they train so that a pruner (ASHA by
default) stops bad ones early.

Storage decides where the study lives and who can share it:

- none given, one worker: an SQLite file ``lrkit-tune.db`` in the working directory; an
  interrupted run resumes by running the same command again (finished trials are kept);
- ``workers > 1`` on one machine: a journal file (``lrkit-tune.journal``, Optuna's
  ``JournalStorage`` file backend; SQLite is not safe for parallel writers);
- many machines: every machine runs the same command against one PostgreSQL URL
  (``postgresql://user:pass@host/db``, Optuna's RDB storage) or one journal file on
  shared storage (``journal:/shared/study.journal``).

A trial whose worker died (killed, out of memory, machine lost) is marked failed, not
left running for ever: each worker records its host, pid and a heartbeat on the trial it
runs, and every worker, before each new trial, fails the running trials of dead local
processes at once and those whose heartbeat is older than ``stale_after`` seconds.

One module per idea: ``space`` (distributions and the default space), ``objective``
(what a trial trains), ``storage`` (where the study lives, heartbeats), ``workers``
(the trial loop, processes, live table), ``report`` (the result and its HTML page) and
``driver`` (``tune()`` itself).
"""
from __future__ import annotations

from lrkit.tuning.driver import StudyMismatchError, tune
from lrkit.tuning.objective import DEFAULT_TARGET_STEPS, Report
from lrkit.tuning.report import TuneResult, write_report
from lrkit.tuning.space import (
    DEFAULT_FAMILIES,
    Categorical,
    Distribution,
    IntUniform,
    LogUniform,
    Space,
    Uniform,
    default_space,
    sample,
    schedule_of,
)
from lrkit.tuning.storage import (
    DEFAULT_JOURNAL,
    DEFAULT_SQLITE,
    HEARTBEAT_SECONDS,
    StorageError,
    fail_dead_trials,
    open_storage,
    redact,
)
from lrkit.tuning.workers import MAX_FAILURES_IN_A_ROW

__all__ = [
    "DEFAULT_FAMILIES", "DEFAULT_JOURNAL", "DEFAULT_SQLITE", "DEFAULT_TARGET_STEPS",
    "HEARTBEAT_SECONDS", "MAX_FAILURES_IN_A_ROW", "Categorical", "Distribution", "IntUniform",
    "LogUniform", "Report", "Space", "StorageError", "StudyMismatchError", "TuneResult",
    "Uniform", "default_space", "fail_dead_trials", "open_storage", "redact", "sample",
    "schedule_of", "tune", "write_report",
]
