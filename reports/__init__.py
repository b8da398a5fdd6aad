"""Reports: pure functions of result files (installed as ``percepbench.reports``). No model code here."""

from percepbench.reports.summary import summary_table

__all__ = ["summary_table"]
