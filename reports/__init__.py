"""Reports: pure functions of result files (installed as ``percepbench.reports``). No model code here.

``build_report(run_dir)`` writes the figures, ``report.html`` and ``report.md`` of a run directory;
``summary_table(records)`` is the plain-text table ``percepbench run`` prints. The figure helpers load
matplotlib and seaborn on first use, so importing this package for ``summary_table`` stays light.
"""

from __future__ import annotations

from typing import Any

from percepbench.reports.summary import summary_table

__all__ = ["REFERENCES", "Reference", "build_report", "metric_palette", "summary_table"]

_LAZY = {"build_report": "percepbench.reports.build", "REFERENCES": "percepbench.reports.figures",
         "Reference": "percepbench.reports.figures", "metric_palette": "percepbench.reports.figures"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
