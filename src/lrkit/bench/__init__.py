"""lrkit.bench: the benchmark arena. ``tasks`` holds the standard problems; ``train`` runs
one of them with a given optimizer and schedule; ``methods`` is the table of contenders
(optimizer x schedule shaped from the budget x how the lr is chosen); ``runner.bench``
runs a suite of cells into a resumable results file; ``report`` turns it into pages."""
from lrkit.bench.methods import METHODS, Method
from lrkit.bench.runner import SUITES, Suite, bench
from lrkit.bench.tasks import TASKS, Batches, FullBatch, Recipe, Task, TaskInstance, get_task
from lrkit.bench.train import Run, train


def write_report(results, out=None):
    """``lrkit.bench.report.write_report``: the report of a results file."""
    from lrkit.bench.report import write_report as write

    return write(results, out)


__all__ = ["METHODS", "SUITES", "TASKS", "Batches", "Method", "Recipe", "Run", "Suite", "Task",
           "TaskInstance", "FullBatch", "bench", "get_task", "train", "write_report"]
