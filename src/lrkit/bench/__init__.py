"""lrkit.bench: the benchmark arena. ``tasks`` holds the standard problems; ``train`` runs
one of them with a given optimizer and schedule."""
from lrkit.bench.tasks import TASKS, Batches, Recipe, Task, TaskInstance, get_task
from lrkit.bench.train import Run, train

__all__ = ["TASKS", "Batches", "Recipe", "Run", "Task", "TaskInstance", "get_task", "train"]
