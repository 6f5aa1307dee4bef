"""A throwaway local PostgreSQL server for tests (Debian's postgresql package).

Started in a temporary directory on a free port, as the ``postgres`` user when run as
root (initdb refuses root), and stopped afterwards; nothing global is touched.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time


def binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def available() -> bool:
    return binary("initdb") is not None and binary("pg_ctl") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(database: str = "lrkit"):
    """Yield a ``postgresql://`` URL of a fresh server with an empty ``database``."""
    import psycopg

    root = tempfile.mkdtemp(prefix="lrkit-pg-", dir="/tmp")
    data = os.path.join(root, "data")
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    try:
        run(binary("initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        run(binary("pg_ctl"), "-D", data, "-w", "-t", "60", "-l", os.path.join(root, "log"),
            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        url = f"postgresql://postgres@127.0.0.1:{port}"
        for _ in range(50):
            try:
                with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {database}")
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        yield f"{url}/{database}"
    finally:
        subprocess.run([*prefix, binary("pg_ctl") or "pg_ctl", "-D", data, "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
