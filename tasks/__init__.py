"""Tasks: scoring kinds and the built-in benchmarks (installed as ``percepbench.tasks``).

Importing this package registers every built-in task spec, and the dataset source each benchmark module
declares beside its tasks (``nights``, ``bapps``, ``things``: :data:`percepbench.registry.DATASETS`).
"""

from percepbench.tasks import bapps, csv_tasks, jnd, nights, severity, things  # noqa: F401  (registers their specs)
from percepbench.tasks.base import Task, TwoAFCTask, score_2afc
from percepbench.tasks.jnd import JNDTask, jnd_average_precision

__all__ = ["JNDTask", "Task", "TwoAFCTask", "jnd_average_precision", "score_2afc"]
