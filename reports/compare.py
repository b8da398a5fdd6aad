"""Regression gate between two runs: ``percepbench compare BASELINE NEW [--max-drop POINTS] [--alpha 0.05]``.

A pure function of two result files (``results.json`` + ``samples.parquet``); no model code.

Rows are aligned by ``(task, subset, metric, measure)``. For each aligned row the table holds the baseline
and new values, ``delta = new - baseline`` (points), a 95% CI of ``delta`` and a two-sided p-value:

- ``method="paired"``: both runs carry per-item samples for the ``(task, metric)``, the subset holds the same
  item ids in both, the items' label columns agree, the samples' scores (JND: distances) are finite and
  they reproduce the records. The per-item values are the column named like the measure when the
  samples have one (retrieval: ``recall@1``, ``map@10``...), else ``score``. The per-item
  score differences ``new - baseline`` (x100) go through :func:`percepbench.stats.paired_comparison`
  (paired bootstrap CI, sign-flip permutation p-value).
- ``method="records"`` otherwise (``"records (<why>)"`` when samples exist but cannot be paired): a
  normal approximation from the records' CIs, ``se_i = (ci_high - ci_low) / (2 * 1.96)``,
  ``se = sqrt(se_b**2 + se_n**2)``, ``z = delta / se``; a record without a CI gives ``p = NaN``: the
  significance of the row cannot be judged.

Statuses (the gate fails safe: a drop it cannot judge and a value that is not a number both fail it):

- ``regression``: ``delta < -max_drop`` and ``p < alpha`` (fails the gate);
- ``unjudged``: ``delta < -max_drop`` and ``p`` is NaN (no CI in a record and no paired samples), so the
  drop cannot be shown to be noise (fails the gate);
- ``invalid``: the baseline or the new value is NaN or infinite, for a row in both runs or only in the new
  run (fails the gate);
- ``changed``: tasks of kind ``analysis`` (attribute sensitivities: no direction is better), ``|delta| >
  max_drop`` and ``p < alpha`` (fails the gate); a change beyond ``max_drop`` there whose significance
  cannot be judged is ``unjudged``;
- ``improvement``: ``delta > +max_drop`` and ``p < alpha``;
- ``ok``: anything else, with the reason ``within tolerance``, ``not significant`` or, for a gain beyond
  tolerance whose significance cannot be judged, ``gain of ... whose significance cannot be judged``;
- ``missing``: the row is only in the baseline (fails the gate);
- ``info``: the row is only in the baseline and ``allow_missing=True`` (shown, never gated);
- ``new``: the row is only in the new run (informational).

Every measure of the scoring tasks is "higher is better" (``2afc_accuracy``, ``odd_one_out_accuracy``,
``jnd_map``, the retrieval ``recall@k``, ``precision@k`` and ``map@k``, all in points), which is what the
one-sided statuses assume; the analyses (``kind == "analysis"`` in the run's task specs) are judged two-sided.

Two runs are **incomparable** (:class:`~percepbench.errors.DataError`, exit 2) when a file is missing,
unreadable or of another schema/version; when one run holds the same ``(task, subset, metric, measure)``
twice; when they share no record at all; when the same ``(task, subset, metric)`` is measured with a
different measure (a different scoring rule, not a different score); or when a task present in both has
a different number of items in some subset **and** different task settings (the task spec's target and
kwargs plus the run's ``task_args`` for it): then the runs evaluated different data under a different
protocol and a delta means nothing. Either difference alone is tolerated, because each has an innocent
cause: the same settings with other item counts is a dataset that changed (rows fall back to the
``records`` method since the items no longer pair), and other settings with the same counts is usually a
data path that moved between machines (rows still pair when the item ids and labels agree). Settings are
compared only when both runs record them. A different device, precision, torch or percepbench version is never
incompatible (comparing those is what the gate is for); it is shown in the report header.

The outputs (``--junit``, ``--markdown``) never overwrite a file of either input run: a path inside an
input run's directory (symbolic links resolved) is refused (:class:`~percepbench.errors.UsageError`, exit 2,
before anything is written) when it is the directory itself, ``results.json``, ``samples.parquet`` or under
``report/``, or when it exists and is not a file ``compare`` wrote (its first line is ``compare``'s own);
a new file there, such as ``runs/ci/compare.xml`` in the CI recipe, is allowed and a rerun may overwrite it.

Each row is tested on its own at ``alpha`` (no multiple-comparison correction): the ``max_drop`` tolerance
is what keeps many rows from producing chance failures, so keep it above the noise of one item flip.
"""

from __future__ import annotations

import math
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from percepbench.errors import DataError, PercepbenchError, UsageError
from percepbench.fileio import atomic_write_text
from percepbench.results import ALL, RESULTS_FILE, SAMPLE_KEY_COLUMNS, SAMPLES_FILE, RunResults, load_results
from percepbench.stats import paired_ap_comparison, paired_comparison

JND_MEASURE = "jnd_map"  # set-level AP: paired on the per-item distances, not on per-item scores

KEY = ["task", "subset", "metric", "measure"]
ROW_COLUMNS = [*KEY, "baseline", "new", "delta", "ci_low", "ci_high", "p_value", "n", "method", "status",
               "reason"]
Z95 = 1.959963984540054

#: Statuses that fail the gate (``exit_code == 1``).
FAILING = ("regression", "changed", "unjudged", "invalid", "missing")
#: Display order: what fails the gate first, then what moved, then the rest.
STATUS_ORDER = {"regression": 0, "changed": 1, "unjudged": 2, "invalid": 3, "missing": 4, "improvement": 5,
                "new": 6, "info": 7, "ok": 8}
#: The folder ``percepbench report`` writes inside a run (``percepbench.reports.build.REPORT_DIR``, which
#: imports matplotlib: the name is repeated here so that compare stays light).
RUN_REPORT_DIR = "report"
#: First characters of the files compare writes (Markdown, JUnit XML): such a file may be overwritten.
_OWN_HEADERS = ("## percepbench compare: ", '<?xml version="1.0" encoding="utf-8"?>\n<testsuites name="percepbench compare"')

_SAMPLE_COLUMNS = {*SAMPLE_KEY_COLUMNS, "score"}
#: the subset prefix of a retrieval task's per-class records (``percepbench.tasks.retrieval.CLASS_PREFIX``;
#: repeated here so that compare imports no task code)
CLASS_PREFIX = "class:"
_DISTANCE_COLUMN = re.compile(r"^d\d*$")  # d (JND), d0, d1 (2AFC), d12, d13, d23 (odd-one-out)


@dataclass
class _Run:
    results: RunResults
    label: str  # the results file, for messages and the header
    folder: Path | None = None  # the run directory (None for a run in memory)

    @property
    def meta(self) -> dict[str, Any]:
        return self.results.meta or {}


def _open(run: str | os.PathLike | RunResults, which: str) -> _Run:
    if isinstance(run, RunResults):
        label = str(Path(run.path) / RESULTS_FILE) if run.path is not None else f"<{which} run in memory>"
        return _Run(run, label, Path(run.path) if run.path is not None else None)
    p = Path(run)
    res = load_results(p)
    return _Run(res, str(p / RESULTS_FILE if p.is_dir() else p), run_folder(p))


def run_folder(run: str | os.PathLike) -> Path:
    """The directory of a run given as its directory or as its ``results.json``."""
    p = Path(run)
    return p if p.is_dir() or p.suffix != ".json" else p.parent


def _written_by_compare(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(max(len(h) for h in _OWN_HEADERS)).decode("utf-8", errors="replace")
    except OSError:
        return False
    return any(head.startswith(h) for h in _OWN_HEADERS)


def check_outputs(runs: Iterable[str | os.PathLike], *, markdown: str | os.PathLike | None = None,
                  junit: str | os.PathLike | None = None) -> None:
    """Refuse output paths that would overwrite a file of an input run (rule in the module docstring).

    ``runs`` are the input runs' directories (or ``results.json`` paths). Raises
    :class:`~percepbench.errors.UsageError` naming the flag, the path and the run.
    """
    outputs = [(flag, Path(p)) for flag, p in (("--junit", junit), ("--markdown", markdown)) if p]
    if len(outputs) == 2 and outputs[0][1].resolve() == outputs[1][1].resolve():
        raise UsageError(f"--junit and --markdown name the same file ({outputs[0][1]}); give each its own")
    folders = [run_folder(r).resolve() for r in runs]
    for flag, path in outputs:
        target = path.resolve()
        for folder in folders:
            if target != folder and folder not in target.parents:
                continue
            parts = target.relative_to(folder).parts
            if not parts:
                what = "the directory of an input run"
            elif parts[0] in (RESULTS_FILE, SAMPLES_FILE, RUN_REPORT_DIR):
                what = f"the file {'/'.join(parts)} of the input run {folder}"
            elif target.exists() and not _written_by_compare(target):
                what = f"an existing file, not written by compare, in the input run {folder}"
            else:
                continue  # a new file, or compare's own output from an earlier call
            raise UsageError(f"{flag} {path}: refusing to write {target}: it is {what}, and compare never "
                             "overwrites its inputs; write the output elsewhere, or under a new name")


@dataclass
class Comparison:
    """The outcome of :func:`compare_runs`: one row per aligned record, plus both runs' metadata."""

    rows: pd.DataFrame
    baseline_meta: dict[str, Any]
    new_meta: dict[str, Any]
    baseline_path: str = "baseline"
    new_path: str = "new"
    max_drop: float = 1.0
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)
    #: the input runs' directories (runs in memory have none): outputs never overwrite their files
    run_dirs: tuple[str, ...] = ()

    @property
    def regressions(self) -> pd.DataFrame:
        """Rows with status ``regression``."""
        return self.rows[self.rows["status"] == "regression"]

    @property
    def failures(self) -> pd.DataFrame:
        """Rows that fail the gate: ``regression``, ``unjudged``, ``invalid`` and ``missing``."""
        return self.rows[self.rows["status"].isin(FAILING)]

    @property
    def exit_code(self) -> int:
        """0 when nothing fails the gate, 1 on any failing row (:data:`FAILING`)."""
        return 1 if len(self.failures) else 0

    @property
    def verdict(self) -> str:
        return "FAIL" if self.exit_code else "PASS"

    def summary_line(self) -> str:
        counts = self.rows["status"].value_counts()
        parts = [f"{int(counts[s])} {s}" for s in STATUS_ORDER if s in counts]
        return (f"{self.verdict}: {', '.join(parts) or 'no rows'} ({len(self.rows)} rows; tolerance "
                f"{self.max_drop:g} points, alpha {self.alpha:g})")

    def _sorted(self) -> pd.DataFrame:
        order = self.rows["status"].map(STATUS_ORDER).fillna(len(STATUS_ORDER))
        size = -self.rows["delta"].abs()  # biggest moves first within a status
        return (self.rows.assign(_o=order, _s=size).sort_values(["_o", "_s"], kind="stable", na_position="last")
                .drop(columns=["_o", "_s"]))

    def _shown(self, max_rows: int | None) -> tuple[pd.DataFrame, int]:
        """Rows to display, flagged first. Failing rows are always shown; ``max_rows`` caps the rest."""
        rows = self._sorted()
        flagged = rows["status"].isin(FAILING)
        rest = rows[~flagged]
        if max_rows is not None and len(rest) > max_rows:
            return pd.concat([rows[flagged], rest.iloc[:max_rows]]), len(rest) - max_rows
        return rows, 0

    def header(self) -> list[tuple[str, str, str]]:
        """(field, baseline, new) rows describing both runs."""
        b, n = self.baseline_meta, self.new_meta

        def device(m: dict[str, Any]) -> str:
            dev, name = m.get("device"), m.get("device_name")
            return f"{dev} ({name})" if dev and name else str(dev or "?")

        def get(m: dict[str, Any], key: str) -> str:
            v = m.get(key)
            return "?" if v is None or v == "" else str(v)

        return [
            ("results", self.baseline_path, self.new_path),
            ("percepbench", get(b, "percepbench_version"), get(n, "percepbench_version")),
            ("git sha", get(b, "git_sha"), get(n, "git_sha")),
            ("device", device(b), device(n)),
            ("cpu", get(b, "cpu_model"), get(n, "cpu_model")),
            ("precision", str(b.get("precision") or "fp32"), str(n.get("precision") or "fp32")),
            ("torch", get(b, "torch_version"), get(n, "torch_version")),
            ("finished", get(b, "finished"), get(n, "finished")),
        ]

    def to_markdown(self, max_rows: int | None = 200) -> str:
        """GitHub-flavoured Markdown: verdict, run header, notes, then the table (flagged rows first)."""
        lines = [f"## percepbench compare: {self.verdict}", "", f"**{_md(self.summary_line())}**", "",
                 "| | baseline | new |", "|---|---|---|"]
        lines += [f"| {_md(k)} | {_md(bv)} | {_md(nv)} |" for k, bv, nv in self.header()]
        if self.notes:
            lines += [""] + [f"- {_md(note)}" for note in self.notes]
        shown, hidden = self._shown(max_rows)
        lines += ["", "| status | task | subset | metric | measure | baseline | new | delta [95% CI] | p | n "
                      "| method | reason |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|"]
        for r in shown.itertuples(index=False):
            status = f"**{r.status}**" if r.status in FAILING else r.status
            cells = [status, r.task, r.subset, r.metric, r.measure, _num(r.baseline), _num(r.new),
                     _delta(r.delta, r.ci_low, r.ci_high), _p(r.p_value), _int(r.n), r.method, r.reason]
            lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
        if hidden:
            lines += ["", f"_{hidden} more row(s) not shown (none of them fails the gate)._"]
        return "\n".join(lines) + "\n"

    def to_text(self, max_rows: int | None = 50) -> str:
        """A compact fixed-width table for the terminal (flagged rows first)."""
        out = [self.summary_line()]
        out += [f"  {k}: {bv} -> {nv}" if bv != nv else f"  {k}: {bv}" for k, bv, nv in self.header()]
        out += [f"  note: {note}" for note in self.notes]
        shown, hidden = self._shown(max_rows)
        head = ["status", "task", "subset", "metric", "measure", "baseline", "new", "delta [95% CI]", "p",
                "reason"]
        body = [[r.status, r.task, r.subset, r.metric, r.measure, _num(r.baseline), _num(r.new),
                 _delta(r.delta, r.ci_low, r.ci_high), _p(r.p_value), r.reason]
                for r in shown.itertuples(index=False)]
        widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head))]
        out += [""] + ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                       for row in [head, *body]]
        if hidden:
            out.append(f"... {hidden} more row(s) not shown (none of them fails the gate)")
        return "\n".join(out) + "\n"

    def to_junit_xml(self) -> str:
        """JUnit XML: one ``<testsuite>`` per task, one ``<testcase>`` per row.

        ``classname="<task>.<subset>"``, ``name="<metric> <measure>"``; failing rows (:data:`FAILING`)
        carry a ``<failure>`` whose ``type`` is the status, ``info`` and ``new`` rows a ``<skipped>``; every case has its numbers in
        ``<system-out>``.
        """
        root = ET.Element("testsuites", name="percepbench compare")
        totals = {"tests": 0, "failures": 0, "skipped": 0}
        for task, rows in self.rows.groupby("task", sort=False):
            suite = ET.SubElement(root, "testsuite", name=str(task))
            props = ET.SubElement(suite, "properties")
            for name, value in (("baseline", self.baseline_path), ("new", self.new_path),
                                ("max_drop", f"{self.max_drop:g}"), ("alpha", f"{self.alpha:g}")):
                ET.SubElement(props, "property", name=name, value=value)
            counts = {"tests": 0, "failures": 0, "skipped": 0}
            for r in rows.itertuples(index=False):
                case = ET.SubElement(suite, "testcase", classname=f"{r.task}.{r.subset}",
                                     name=f"{r.metric} {r.measure}", time="0")
                detail = (f"baseline {_num(r.baseline)}, new {_num(r.new)}, delta "
                          f"{_delta(r.delta, r.ci_low, r.ci_high)}, p {_p(r.p_value)}, n {_int(r.n)}, "
                          f"method {r.method}: {r.status} ({r.reason})")
                counts["tests"] += 1
                if r.status in FAILING:
                    counts["failures"] += 1
                    fail = ET.SubElement(case, "failure", message=f"{r.status}: {r.reason}", type=r.status)
                    fail.text = detail
                elif r.status in ("info", "new"):
                    counts["skipped"] += 1
                    ET.SubElement(case, "skipped", message=f"{r.status}: {r.reason}")
                ET.SubElement(case, "system-out").text = detail
            for k, v in counts.items():
                suite.set(k, str(v))
                totals[k] += v
            suite.set("errors", "0")
            suite.set("time", "0")
        for k, v in totals.items():
            root.set(k, str(v))
        root.set("errors", "0")
        ET.indent(root)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _md(value: Any) -> str:
    """A Markdown table cell: ``|`` escaped, no line breaks."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _isnan(x: Any) -> bool:
    return x is None or bool(pd.isna(x))


def _num(x: Any) -> str:
    return "n/a" if _isnan(x) else f"{x:.2f}"


def _int(x: Any) -> str:
    return "n/a" if _isnan(x) else str(int(x))


def _p(p: Any) -> str:
    if _isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_is(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _delta(d: Any, lo: Any, hi: Any) -> str:
    if _isnan(d):
        return "n/a"
    text = f"{d:+.2f}"
    if not (_isnan(lo) or _isnan(hi)):
        text += f" [{lo:+.2f}, {hi:+.2f}]"
    return text


# --------------------------------------------------------------------------- checks


def _indexed(run: _Run) -> pd.DataFrame:
    """Records indexed by KEY; duplicate keys are a DataError naming the file."""
    rec = run.results.records.copy()
    for col in KEY:
        rec[col] = rec[col].astype(str)
    dup = rec.duplicated(KEY, keep=False)
    if dup.any():
        keys = sorted({tuple(k) for k in rec.loc[dup, KEY].itertuples(index=False)})
        shown = "; ".join("/".join(k) for k in keys[:5]) + (" ..." if len(keys) > 5 else "")
        raise DataError(f"{run.label}: duplicate records for (task, subset, metric, measure): {shown}")
    return rec.set_index(KEY)


def _check_measures(b: pd.DataFrame, n: pd.DataFrame, base: _Run, new: _Run) -> None:
    """The same (task, subset, metric) scored with measures that share nothing: another scoring rule."""
    def measures(rec: pd.DataFrame) -> dict[tuple[str, ...], set[str]]:
        out: dict[tuple[str, ...], set[str]] = {}
        for task, subset, metric, measure in rec.index:
            out.setdefault((task, subset, metric), set()).add(measure)
        return out

    mb, mn = measures(b), measures(n)
    for key in [k for k in mb if k in mn]:  # baseline order: a stable message
        if not mb[key] & mn[key]:
            raise DataError(
                f"{new.label}: {'/'.join(key)} is measured as {', '.join(sorted(mn[key]))} but as "
                f"{', '.join(sorted(mb[key]))} in {base.label}; the runs score it differently and cannot "
                f"be compared")


def _task_settings(meta: dict[str, Any], task: str) -> dict[str, Any] | None:
    """The task's spec target and kwargs merged with the run's ``task_args`` for it; None if unrecorded."""
    spec = (meta.get("tasks") or {}).get(task)
    if not isinstance(spec, dict):
        return None
    config = meta.get("config") or {}
    kwargs = dict(spec.get("kwargs") or {})
    # task_args are keyed by the name the user typed: the task itself or its family (default variant)
    for name, args in (config.get("task_args") or {}).items():
        if name == task or task.startswith(f"{name}."):
            kwargs.update(args or {})
    return {"target": spec.get("target"), "kwargs": kwargs}


def _counts(rec: pd.DataFrame, task: str) -> dict[str, set[int]]:
    df = rec.reset_index()
    df = df[df["task"] == task]
    return {s: set(pd.to_numeric(g["n"], errors="coerce").dropna().astype(int)) for s, g in df.groupby("subset")}


def _setting_notes(mb: dict[str, Any], mn: dict[str, Any]) -> list[str]:
    """Notes on settings that differ between the runs and move scores without any code change: metric
    options, seed, random weights (``pretrained=false``)."""
    notes = []
    ab, an = ((m.get("config") or {}).get("metric_args") or {} for m in (mb, mn))
    if ab != an:
        notes.append(f"the runs used different metric options ({ab or 'none'} -> {an or 'none'})")
    if mb.get("seed") != mn.get("seed"):
        notes.append(f"the runs used different seeds ({mb.get('seed')} -> {mn.get('seed')}): generated items and "
                     "bootstrap CIs differ")
    rb, rn = (set(m.get("random_weights") or []) for m in (mb, mn))
    for run, names in (("baseline", rb), ("new", rn)):
        if names:
            notes.append(f"the {run} run computed {', '.join(sorted(names))} with random weights (pretrained=false): "
                         "not the published metric")
    return notes


def _check_tasks(b: pd.DataFrame, n: pd.DataFrame, base: _Run, new: _Run, notes: list[str]) -> None:
    tasks = sorted(set(b.index.get_level_values("task")) & set(n.index.get_level_values("task")))
    for task in tasks:
        cb, cn = _counts(b, task), _counts(n, task)
        differ = {s: (cb[s], cn[s]) for s in cb.keys() & cn.keys() if cb[s] != cn[s]}
        sb, sn = _task_settings(base.meta, task), _task_settings(new.meta, task)
        settings_differ = sb is not None and sn is not None and sb != sn
        if differ and settings_differ:
            what = "; ".join(f"subset {s}: n={sorted(x)} vs n={sorted(y)}" for s, (x, y) in sorted(differ.items()))
            raise DataError(
                f"{new.label}: task {task!r} was run on other items ({what}) with other settings "
                f"({sn} vs {sb} in {base.label}); the runs cannot be compared")
        if settings_differ:
            notes.append(f"task {task}: settings differ ({sb} -> {sn}) but item counts agree; compared anyway")
        elif differ:
            notes.append(f"task {task}: item counts differ in subset(s) {', '.join(sorted(differ))} with the "
                         f"same settings; those rows are compared unpaired")


# --------------------------------------------------------------------------- per-row statistics


def _item_columns(samples: pd.DataFrame) -> list[str]:
    """Columns describing the item (labels, file names), not the metric: same value for every metric."""
    cols = [c for c in samples.columns if c not in _SAMPLE_COLUMNS and not _DISTANCE_COLUMN.match(str(c))
            and not _holds_lists(samples[c])]
    if samples["metric"].nunique() > 1 and cols:
        varying = samples.groupby("item", sort=False)[cols].nunique(dropna=False).max()
        cols = [c for c in cols if varying[c] <= 1]
    return cols


def _holds_lists(column: pd.Series) -> bool:
    """A column of per-item lists (a retrieval query's top-k ids, distances, hits): the metric's output, not
    a label of the item."""
    first = column.dropna()
    return bool(len(first)) and isinstance(first.iloc[0], (list, tuple, np.ndarray))


class _Samples:
    """Per-item samples of one run, split by (task, metric), with the item columns of each task."""

    def __init__(self, samples: pd.DataFrame | None):
        self.frames: dict[tuple[str, str], pd.DataFrame] = {}
        self.item_cols: dict[str, list[str]] = {}
        if samples is None or samples.empty or not set(samples.columns) >= _SAMPLE_COLUMNS:
            return
        s = samples.copy()
        for col in ("task", "metric", "item", "subset"):
            s[col] = s[col].astype(str)
        for task, frame in s.groupby("task", sort=False):
            self.item_cols[str(task)] = _item_columns(frame)
            for metric, f in frame.groupby("metric", sort=False):
                self.frames[(str(task), str(metric))] = f

    def get(self, task: str, metric: str, subset: str) -> pd.DataFrame | None:
        f = self.frames.get((task, metric))
        if f is None:
            return None
        if subset == ALL and not (f["subset"] == ALL).any():
            return f  # the pooled record covers every item of the task
        if subset.startswith(CLASS_PREFIX) and not (f["subset"] == subset).any() and "label" in f.columns:
            # a retrieval per-class record: the queries that carry the label (labels joined by "|")
            name = subset[len(CLASS_PREFIX):]
            return f[[name in str(v).split("|") for v in f["label"]]]
        return f[f["subset"] == subset]


def _labels_differ(fb: pd.DataFrame, fn: pd.DataFrame, cols: list[str]) -> tuple[int, list[str]]:
    """Items whose label/item columns disagree (both frames aligned on item), and the columns involved."""
    bad = np.zeros(len(fb), dtype=bool)
    which = []
    for c in cols:
        a, b = fb[c].to_numpy(), fn[c].to_numpy()
        if pd.api.types.is_numeric_dtype(fb[c]) and pd.api.types.is_numeric_dtype(fn[c]):
            same = np.isclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-9, atol=1e-12, equal_nan=True)
        else:
            same = fb[c].astype(str).to_numpy() == fn[c].astype(str).to_numpy()
        if not same.all():
            which.append(str(c))
            bad |= ~same
    return int(bad.sum()), which


def _paired(sb: _Samples, sn: _Samples, task: str, subset: str, metric: str, delta: float, *,
            n_boot: int, seed: int, measure: str = "") -> tuple[dict[str, float] | None, str]:
    """Paired statistics on per-item scores (or, for JND, on the AP of the per-item distances), or (None, why not)."""
    fb, fn = sb.get(task, metric, subset), sn.get(task, metric, subset)
    if fb is None and fn is None:
        return None, ""
    if fb is None or fn is None:
        return None, f"no samples in the {'baseline' if fb is None else 'new'} run"
    if fb.empty or fn.empty:
        return None, "no samples for this subset"
    if fb["item"].duplicated().any() or fn["item"].duplicated().any():
        return None, "duplicate item ids in samples"
    only_b = len(set(fb["item"]) - set(fn["item"]))
    only_n = len(set(fn["item"]) - set(fb["item"]))
    if only_b or only_n:
        return None, f"items differ: {only_b} only in baseline, {only_n} only in new"
    fb = fb.set_index("item")
    fn = fn.set_index("item").loc[fb.index]
    cols = [c for c in sb.item_cols.get(task, []) if c in set(sn.item_cols.get(task, []))]
    n_bad, which = _labels_differ(fb, fn, cols)
    if n_bad:
        return None, f"labels differ on {n_bad} of {len(fb)} items ({', '.join(which)})"
    jnd = measure == JND_MEASURE and {"d", "same"} <= set(fb.columns) & set(fn.columns)
    # a task with several measures (retrieval) keeps each measure's per-item values in a column of its name
    column = measure if measure and measure in set(fb.columns) & set(fn.columns) else "score"
    used = ["d"] if jnd else [column]
    if not all(np.isfinite(f[c].to_numpy(np.float64)).all() for f in (fb, fn) for c in used):
        return None, f"non-finite {used[0]} values in the samples"
    if jnd:
        # AP is set-level (per-item scores are NaN): paired bootstrap of AP(new) - AP(baseline) on the same pairs
        r = paired_ap_comparison(fn["d"].to_numpy(np.float64), fb["d"].to_numpy(np.float64),
                                 fn["same"].to_numpy(np.float64), n_boot=n_boot, seed=seed)
    else:
        r = paired_comparison(fn[column].to_numpy(np.float64) * 100, fb[column].to_numpy(np.float64) * 100,
                              n_boot=n_boot, seed=seed)
    if not math.isclose(r["diff"], delta, rel_tol=1e-6, abs_tol=1e-6):
        return None, "samples do not reproduce the records' values"
    return {**r, "n": len(fb)}, ""


def _se(lo: Any, hi: Any) -> float:
    if _isnan(lo) or _isnan(hi):
        return float("nan")
    return (float(hi) - float(lo)) / (2 * Z95)


def _from_records(rb: pd.Series, rn: pd.Series, delta: float) -> dict[str, float]:
    """Unpaired z-test from the two records' 95% CIs (normal approximation)."""
    se = math.hypot(_se(rb["ci_low"], rb["ci_high"]), _se(rn["ci_low"], rn["ci_high"]))
    if math.isnan(se) or math.isnan(delta):
        return {"ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
    if se == 0:  # both runs constant on their items: the difference is exact
        return {"ci_low": delta, "ci_high": delta, "p_value": 1.0 if delta == 0 else 0.0}
    z = delta / se
    return {"ci_low": delta - Z95 * se, "ci_high": delta + Z95 * se, "p_value": math.erfc(abs(z) / math.sqrt(2))}


def _not_finite(vb: float, vn: float) -> str:
    """The reason of an ``invalid`` row, or "" when both values are finite numbers."""
    which = [w for w, v in (("baseline", vb), ("new", vn)) if not math.isfinite(v)]
    return f"the {' and '.join(which)} value is not a finite number" if which else ""


def _status(delta: float, p: float, *, max_drop: float, alpha: float, two_sided: bool = False) -> tuple[str, str]:
    beyond = delta < -max_drop or delta > max_drop
    if not beyond:
        return "ok", f"within tolerance (|delta| <= {max_drop:g} points)"
    if two_sided:  # an analysis: what a metric is sensitive to has no better direction; any change is one
        if math.isnan(p):
            return "unjudged", (f"change of {delta:+.2f} > {max_drop:g} points whose significance cannot be judged "
                                "(no CI in a record and no paired samples): fails the gate")
        if p >= alpha:
            return "ok", f"not significant ({_p_is(p)}, alpha {alpha:g})"
        return "changed", f"change of {delta:+.2f} > {max_drop:g} points ({_p_is(p)}, alpha {alpha:g})"
    if math.isnan(p):
        unknown = "whose significance cannot be judged (no CI in a record and no paired samples)"
        if delta < 0:
            return "unjudged", f"drop of {-delta:.2f} > {max_drop:g} points {unknown}: fails the gate"
        return "ok", f"gain of {delta:.2f} > {max_drop:g} points {unknown}"
    if p >= alpha:
        return "ok", f"not significant ({_p_is(p)}, alpha {alpha:g})"
    if delta < 0:
        return "regression", f"drop of {-delta:.2f} > {max_drop:g} points ({_p_is(p)}, alpha {alpha:g})"
    return "improvement", f"gain of {delta:.2f} > {max_drop:g} points ({_p_is(p)}, alpha {alpha:g})"


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


# --------------------------------------------------------------------------- public API


def compare_runs(
    baseline: str | os.PathLike | RunResults,
    new: str | os.PathLike | RunResults,
    *,
    max_drop: float = 1.0,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    allow_missing: bool = False,
) -> Comparison:
    """Compare a new run against a baseline run, row by row (see the module docstring for the rules).

    Args:
        baseline, new: run directories, ``results.json`` paths or loaded :class:`RunResults`.
        max_drop: tolerance in points; a drop must exceed it (and be significant) to be a regression.
        alpha: significance level of the two-sided test.
        n_boot: bootstrap resamples for the paired CI (and permutations for the paired p-value: 2000).
        seed: seed of the bootstrap and permutation draws.
        allow_missing: rows only in the baseline are ``info`` instead of ``missing``.

    Raises:
        DataError: a file is missing/unreadable/of another schema, or the runs are incomparable.
    """
    if max_drop < 0 or not math.isfinite(max_drop):
        raise UsageError(f"--max-drop must be a finite number of points >= 0, got {max_drop}")
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must lie in (0, 1), got {alpha}")
    base, nw = _open(baseline, "baseline"), _open(new, "new")
    b, n = _indexed(base), _indexed(nw)
    _check_measures(b, n, base, nw)  # before "nothing in common": a changed measure is the clearer message
    common = b.index.intersection(n.index)
    if len(common) == 0:
        raise DataError(f"{nw.label}: no records in common with {base.label} "
                        f"(tasks {sorted(set(n.index.get_level_values('task')))} vs "
                        f"{sorted(set(b.index.get_level_values('task')))}); nothing to compare")
    notes: list[str] = []
    for run, which in ((base, "baseline"), (nw, "new")):
        if not run.results.complete:
            notes.append(f"the {which} run is incomplete (interrupted or still running): {run.label}")
    pb, pn = (str(r.results.meta.get("precision") or "fp32") for r in (base, nw))
    if pb != pn:
        notes.append(f"the runs used different precision ({pb} -> {pn}): expect small score shifts from that alone")
    _check_tasks(b, n, base, nw, notes)
    notes += _setting_notes(base.meta, nw.meta)

    sb, sn = _Samples(base.results.samples), _Samples(nw.results.samples)
    analyses = {t for run in (base, nw) for t, spec in (run.results.meta.get("tasks") or {}).items()
                if isinstance(spec, dict) and spec.get("kind") == "analysis"}
    rows: list[dict[str, Any]] = []
    for key in b.index:
        rb = b.loc[key]
        row = dict(zip(KEY, key, strict=True))
        if key not in n.index:
            row.update(baseline=_float(rb["value"]), new=float("nan"), delta=float("nan"),
                       ci_low=float("nan"), ci_high=float("nan"), p_value=float("nan"),
                       n=_float(rb["n"]), method="none",
                       status="info" if allow_missing else "missing",
                       reason="only in the baseline" + (" (allowed)" if allow_missing else ""))
            rows.append(row)
            continue
        rn = n.loc[key]
        vb, vn = _float(rb["value"]), _float(rn["value"])
        delta = vn - vb
        invalid = _not_finite(vb, vn)
        if invalid:  # a NaN or infinite score is a broken run, never a pass
            row.update(baseline=vb, new=vn, delta=float("nan"), ci_low=float("nan"), ci_high=float("nan"),
                       p_value=float("nan"), n=_float(rn["n"]), method="none", status="invalid", reason=invalid)
            rows.append(row)
            continue
        task, subset, metric, measure = key
        stats, why = _paired(sb, sn, task, subset, metric, delta, n_boot=n_boot, seed=seed, measure=measure)
        if stats is not None:
            method, count = "paired", stats["n"]
        else:
            stats = _from_records(rb, rn, delta)
            method, count = ("records" + (f" ({why})" if why else "")), _float(rn["n"])
        status, reason = _status(delta, stats["p_value"], max_drop=max_drop, alpha=alpha,
                                 two_sided=task in analyses)
        row.update(baseline=vb, new=vn, delta=delta, ci_low=float(stats["ci_low"]),
                   ci_high=float(stats["ci_high"]), p_value=float(stats["p_value"]), n=count,
                   method=method, status=status, reason=reason)
        rows.append(row)
    for key in n.index.difference(b.index, sort=False):
        rn = n.loc[key]
        vn = _float(rn["value"])
        invalid = _not_finite(0.0, vn)
        rows.append({**dict(zip(KEY, key, strict=True)), "baseline": float("nan"), "new": vn,
                     "delta": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                     "p_value": float("nan"), "n": _float(rn["n"]), "method": "none",
                     "status": "invalid" if invalid else "new",
                     "reason": f"{invalid} (only in the new run)" if invalid else "only in the new run"})
    frame = pd.DataFrame(rows, columns=ROW_COLUMNS)
    frame["n"] = pd.to_numeric(frame["n"], errors="coerce").round().astype("Int64")
    return Comparison(rows=frame, baseline_meta=base.meta, new_meta=nw.meta, baseline_path=base.label,
                      new_path=nw.label, max_drop=max_drop, alpha=alpha, notes=notes,
                      run_dirs=tuple(str(r.folder) for r in (base, nw) if r.folder is not None))


def _append(path: str | os.PathLike, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")


class _FromEnv:
    """Default of ``write_outputs(step_summary=...)``: ``$GITHUB_STEP_SUMMARY`` read at call time."""

    def __repr__(self) -> str:
        return "$GITHUB_STEP_SUMMARY"


STEP_SUMMARY_FROM_ENV: Any = _FromEnv()


def write_outputs(
    comparison: Comparison,
    *,
    markdown: str | os.PathLike | None = None,
    junit: str | os.PathLike | None = None,
    step_summary: str | os.PathLike | None = STEP_SUMMARY_FROM_ENV,
) -> None:
    """Write the Markdown and JUnit files (atomically) and append the Markdown to the step summary.

    Paths that would overwrite a file of either compared run are refused first (:func:`check_outputs`,
    :class:`~percepbench.errors.UsageError`), and then nothing is written.

    ``step_summary`` defaults to ``$GITHUB_STEP_SUMMARY`` read when the function is *called* (a default
    of ``os.environ.get(...)`` would freeze the value at import time); ``None`` or ``""`` writes no
    summary. The summary is appended to, never overwritten: a job may hold several steps' summaries.
    """
    check_outputs(comparison.run_dirs, markdown=markdown, junit=junit)
    if step_summary is STEP_SUMMARY_FROM_ENV:
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    text = comparison.to_markdown()
    if markdown:
        atomic_write_text(markdown, text)
    if junit:
        atomic_write_text(junit, comparison.to_junit_xml())
    if step_summary:
        _append(step_summary, text)


def _error_outputs(message: str, *, markdown: Any, junit: Any) -> None:
    """On incomparable inputs, leave CI something to show: the error in every requested output."""
    text = f"## percepbench compare: ERROR\n\n**ERROR**: {_md(message)}\n"
    root = ET.Element("testsuites", name="percepbench compare", tests="1", failures="0", errors="1",
                      skipped="0")
    suite = ET.SubElement(root, "testsuite", name="compare", tests="1", failures="0", errors="1", skipped="0",
                          time="0")
    case = ET.SubElement(suite, "testcase", classname="compare", name="inputs", time="0")
    ET.SubElement(case, "error", message=message, type="DataError").text = message
    ET.indent(root)
    outputs: Iterable[tuple[Any, str]] = (
        (markdown, text), (junit, '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode")))
    for path, body in outputs:
        if path:
            atomic_write_text(path, body)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        _append(summary, text)


def main_compare(
    baseline: str | os.PathLike,
    new: str | os.PathLike,
    *,
    max_drop: float = 1.0,
    alpha: float = 0.05,
    junit: str | os.PathLike | None = None,
    markdown: str | os.PathLike | None = None,
    allow_missing: bool = False,
    out: TextIO | None = None,
) -> int:
    """``percepbench compare``: print a table, write the outputs, return the exit code.

    0: no failing row; 1: a failing row (``regression``, ``unjudged``, ``invalid`` or ``missing``); 2: an
    output path that would overwrite an input run's file (nothing is written), or incompatible or unreadable
    inputs (the error goes to stderr as ``percepbench compare: error: <message>``, and into any requested
    output so CI shows it). ``out`` defaults to ``sys.stdout`` at call time.
    """
    out = sys.stdout if out is None else out
    try:
        check_outputs((baseline, new), markdown=markdown, junit=junit)
    except UsageError as exc:
        print(f"percepbench compare: error: {exc}", file=sys.stderr)
        return 2
    try:
        comparison = compare_runs(baseline, new, max_drop=max_drop, alpha=alpha, allow_missing=allow_missing)
    except PercepbenchError as exc:
        print(f"percepbench compare: error: {exc}", file=sys.stderr)
        try:
            _error_outputs(str(exc), markdown=markdown, junit=junit)
        except OSError as err:
            print(f"percepbench compare: error: cannot write outputs: {err}", file=sys.stderr)
        return 2
    out.write(comparison.to_text())
    try:
        write_outputs(comparison, markdown=markdown, junit=junit)
    except OSError as exc:
        print(f"percepbench compare: error: cannot write outputs: {exc}", file=sys.stderr)
        return 2
    return comparison.exit_code
