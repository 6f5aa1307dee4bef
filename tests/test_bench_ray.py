"""The arena on Ray (issue 17): ``bench(executor="ray")`` gives the local executor's
metrics cell for cell, and a killed Ray bench resumes without repeating finished cells.

One local Ray instance (2 CPUs) serves the module: starting Ray takes seconds. A killed
run is a separate driver process connected to it by address, as on a cluster."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from lrkit.bench import results as R  # noqa: E402
from lrkit.bench.runner import bench  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("ray")]
SRC = str(Path(__file__).resolve().parents[1] / "src")
CELLS = dict(tasks=["quadratic", "rosenbrock"], methods=["sgd_cosine", "adam_default"],
             seeds=1, steps=40, report=False, progress=False)


@pytest.fixture(scope="module")
def cluster():
    env = {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 2**20, runtime_env={"env_vars": env})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _records(out: Path) -> list[dict]:
    return R.ResultsFile(out / R.RESULTS, R.RUN_COLUMNS, repair=False).records


def test_ray_cells_equal_the_local_executor(tmp_path, cluster):
    local = bench("quick", **CELLS, workers=1, out=tmp_path / "local", log=lambda s: None)
    lines: list[str] = []
    on_ray = bench("quick", **CELLS, executor="ray", out=tmp_path / "ray", log=lines.append)
    assert local.complete and on_ray.complete, (local.errors, on_ray.errors)
    assert on_ray.new == local.new == local.total == 14  # 2 tasks x 6 lrs + 2 range tests
    a = {R.run_key(r): r for r in _records(tmp_path / "local")}
    b = {R.run_key(r): r for r in _records(tmp_path / "ray")}
    assert a.keys() == b.keys() and len(a) == 12
    for key in a:  # seeded cells: the same metrics, bit for bit
        for column in ("final", "half", "steps_to_target", "diverged", "metrics", "losses"):
            assert a[key][column] == b[key][column], (key, column)
    again = bench("quick", **CELLS, executor="ray", out=tmp_path / "ray", log=lines.append)
    assert again.new == 0 and again.before == 14  # resumed: nothing to run


def test_killed_ray_bench_resumes_without_repeating_cells(tmp_path, cluster):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "lrkit.cli", "bench", "--tasks", "quadratic", "--methods",
           "sgd_cosine,adam_wsd,adam_default", "--steps", "300", "--out", str(out),
           "--no-report", "--executor", "ray", "--address", cluster]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results.csv"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and len(_records(out)) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the bench ended before it could be killed: " + \
            proc.stderr.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)  # the driver only: Ray cancels its tasks
        proc.wait(30)
        proc.stderr.close()
    first = _records(out)
    assert 3 <= len(first) < 11  # 2 methods x 5 lrs + 1
    tests_before = len(R.ResultsFile(out / R.RANGE_TESTS, R.RANGE_COLUMNS).records)
    lines: list[str] = []
    done = bench("quick", tasks=["quadratic"], methods=["sgd_cosine", "adam_wsd",
                 "adam_default"], steps=300, out=out, report=False, progress=False,
                 executor="ray", log=lines.append)
    assert done.complete and done.before == len(first) + tests_before
    assert done.new == 13 - done.before
    final = _records(out)
    assert len(final) == 11 and len({R.run_key(r) for r in final}) == 11  # each once
    assert final[:len(first)] == first  # finished rows untouched, none redone


def test_executor_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="executor"):
        bench("quick", executor="dask", out=tmp_path)
    with pytest.raises(ValueError, match="address"):
        bench("quick", address="auto", out=tmp_path)
