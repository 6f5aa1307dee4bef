"""Where a study of ``lrkit.tune`` lives (SQLite, a journal file, PostgreSQL) and how a
dead worker's trial is found: each worker records its host, pid and a heartbeat on the
trial it runs; ``fail_dead_trials`` fails those of dead local processes and stale ones."""
from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

from lrkit import _checks as C

DEFAULT_SQLITE = "lrkit-tune.db"
DEFAULT_JOURNAL = "lrkit-tune.journal"
HEARTBEAT_SECONDS = 5.0


class StorageError(ValueError):
    """A storage URL that cannot be used."""


_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^/@:]*:)(?P<password>[^@]*)@")


def redact(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***``: the
    only form a storage URL is shown in (errors, progress, reports, logs)."""
    return _PASSWORD.sub(r"\g<head>***@", url)


def _scrub(text: str, url: str) -> str:
    """``text`` (a driver's message about ``url``) with the URL's password hidden."""
    match = _PASSWORD.match(url)
    if match and match["password"]:
        text = text.replace(match["password"], "***")
    return text.replace(url, redact(url))


def open_storage(storage: str | None, workers: int = 1) -> Any:
    """The Optuna storage a URL names (see the module docstring for the forms); errors
    show the URL with its password hidden (``redact``)."""
    workers = C.positive_int("open_storage()", "workers", workers)
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if storage is None:
        storage = f"journal:{DEFAULT_JOURNAL}" if workers > 1 else f"sqlite:///{DEFAULT_SQLITE}"
    if not isinstance(storage, str) or not storage.strip():
        raise StorageError(f"storage must be a URL such as sqlite:///study.db, "
                           f"postgresql://user@host/db or journal:PATH, got "
                           f"{redact(storage) if isinstance(storage, str) else storage!r}")
    url = storage.strip()
    shown = redact(url)
    if url.startswith("journal:") or url.endswith((".journal", ".log")):
        path = url[len("journal:"):] if url.startswith("journal:") else url
        if not path:
            raise StorageError(f"storage {shown!r}: a journal needs a file path (journal:PATH)")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        except OSError as exc:
            raise StorageError(f"storage {shown!r}: cannot open the journal file: "
                               f"{exc}") from None
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in ("sqlite", "postgresql", "postgres", "mysql"):
        raise StorageError(f"storage {shown!r}: unknown kind; use sqlite:///FILE, "
                           f"postgresql://USER@HOST/DB, mysql://... or journal:FILE")
    if scheme == "sqlite" and workers > 1:
        raise StorageError(f"storage {shown!r}: SQLite is not safe for {workers} parallel "
                           f"writers; use journal:FILE (one machine) or PostgreSQL")
    if scheme == "postgres":
        url = "postgresql" + url[len("postgres"):]
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except ImportError as exc:
            raise StorageError(f"storage {shown!r} needs a database driver: "
                               f"{_scrub(str(exc), url)} (pip install 'lrkit[tune]' "
                               f"brings PostgreSQL's)") from None
        except Exception as exc:  # sqlalchemy raises many kinds: report one clear line
            # workers starting together on a new database race to create its tables; the
            # loser finds them on the next attempt
            if attempt < 3 and "refused" not in str(exc):
                time.sleep(0.2 + 0.3 * attempt)
                continue
            text = _scrub(str(exc), url).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise StorageError(f"storage {shown!r} cannot be opened: {first}") from None
    raise AssertionError("unreachable")


# -- dead workers ---------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: Any, stale_after: float) -> list[int]:
    """Mark failed the running trials whose worker is gone; returns their numbers."""
    from optuna.trial import TrialState

    host, now, failed = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.system_attrs
        pid, where = attrs.get("lrkit_pid"), attrs.get("lrkit_host")
        beat = attrs.get("lrkit_heartbeat", attrs.get("lrkit_started", now))
        dead = (where == host and pid is not None and not _pid_alive(int(pid))
                and int(pid) != os.getpid())
        if dead or now - float(beat) > stale_after:
            study._storage.set_trial_system_attr(
                t._trial_id, "lrkit_failed", "worker died" if dead else "heartbeat stale")
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            failed.append(t.number)
    return failed


class Heartbeat:
    """Refreshes ``lrkit_heartbeat`` on the running trial from a background thread."""

    def __init__(self, study: Any, trial_id: int) -> None:
        self.study, self.trial_id = study, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self.study._storage.set_trial_system_attr(self.trial_id, "lrkit_heartbeat",
                                                          time.time())
            except Exception:  # the trial finished meanwhile: nothing to refresh
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=1.0)
