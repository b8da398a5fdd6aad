"""Tasks: scoring kinds and the built-in benchmarks (installed as ``percepbench.tasks``).

Importing this package registers every built-in task spec, and the dataset source each benchmark module
declares beside its tasks (``nights``, ``bapps``, ``things``, ``imagenet_r``, ``coco``:
:data:`percepbench.registry.DATASETS`). The retrieval task kind is in :mod:`percepbench.tasks.retrieval`.
"""

from percepbench.tasks import (  # noqa: F401  (registers their specs)
    attributes,
    bapps,
    coco,
    csiq,
    csv_tasks,
    imagenet_r,
    jnd,
    kadid10k,
    live,
    mos,
    nights,
    pieapp,
    pipal,
    retrieval_user,
    severity,
    things,
    tid2013,
)
from percepbench.tasks.base import Task, TwoAFCTask, score_2afc
from percepbench.tasks.jnd import JNDTask, jnd_average_precision

__all__ = ["JNDTask", "Task", "TwoAFCTask", "jnd_average_precision", "score_2afc"]
