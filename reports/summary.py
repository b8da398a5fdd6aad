"""Plain-text summary of a run's records (what ``percepbench run`` prints). Pure function of records."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from percepbench.results import ALL

#: how the plain-text table and the reports label a metric run with random weights
RANDOM_LABEL = " (random weights)"


def summary_table(records: pd.DataFrame, *, task: str | None = None, random_weights: Iterable[str] = ()) -> str:
    """One block per task: metrics as rows (best first), subsets as columns, the pooled score with its CI.

    Values are the task's measure (2AFC accuracy in %, for 2AFC tasks). A task with several measures
    (retrieval: recall@k, precision@k, map@k) gets one column per measure instead, pooled over its subsets,
    with the 95% CI of its first measure. Metrics in ``random_weights`` (built with ``pretrained=false``) are
    labelled "(random weights)".
    """
    if records.empty:
        return "(no results)"
    random = set(random_weights)
    if random:  # results of random weights are labelled wherever a metric is named
        records = records.assign(metric=[f"{m}{RANDOM_LABEL}" if m in random else m for m in records["metric"]])
    blocks = []
    tasks = [task] if task else list(dict.fromkeys(records["task"]))
    for t in tasks:
        df = records[records["task"] == t]
        if df["measure"].nunique() > 1:
            if ALL in set(df["subset"]) or df["subset"].nunique() == 1:
                blocks.append(_measures_block(t, df))
                continue
            # several measures over subsets without a pooled record (an analysis): its first measure per subset
            df = df[df["measure"] == df["measure"].iloc[0]]
        measure = df["measure"].iloc[0]
        table = df.pivot_table(index="metric", columns="subset", values="value", aggfunc="first")
        subsets = [c for c in table.columns if c != ALL]
        pooled_record = ALL in table.columns or len(subsets) == 1
        overall = ALL if ALL in table.columns else subsets[0]
        hidden = max(0, len(subsets) - MAX_SUBSETS)
        subsets = subsets[:MAX_SUBSETS]
        pooled = df[df["subset"] == overall].set_index("metric")
        if pooled_record:
            order = pooled["value"].sort_values(ascending=False).index
        else:  # subsets without a pooled record (an analysis): metrics in run order, no headline column
            order = list(dict.fromkeys(df["metric"]))
        table = table.loc[order]
        n = int(pooled["n"].iloc[0])
        unit = " (%)" if _is_percent(measure) else ""
        head = (f"{t} — {measure}{unit}, n={n}" + (f", {len(subsets) + hidden} subsets" if len(subsets) > 1 else "")
                + (f" ({hidden} more in results.json and the report)" if hidden else ""))
        rows = []
        for metric, row in table.iterrows():
            cells = [metric]
            if pooled_record:
                rec = pooled.loc[metric]
                cells += [f"{rec['value']:.1f}", f"[{rec['ci_low']:.1f}, {rec['ci_high']:.1f}]"]
            if len(subsets) > 1:
                cells += [f"{row[s]:.1f}" for s in subsets]
            rows.append(cells)
        header = (["metric"] + ([overall, "95% CI"] if pooled_record else [])
                  + (subsets if len(subsets) > 1 else []))
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = [head] + [_row(r, widths) for r in [header, ["-" * w for w in widths], *rows]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


#: subset columns the plain-text summary shows per task (the others are in results.json and the report)
MAX_SUBSETS = 10


def _is_percent(measure: str) -> bool:
    return measure.endswith("accuracy") or measure in ("jnd_map", "p_first_closer", "foreground_reliance") or \
        any(measure.startswith(f"{m}@") for m in ("recall", "precision", "map"))


def _row(cells: list, widths: list[int]) -> str:
    """First column left-aligned, the others right-aligned."""
    return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def _measures_block(task: str, df: pd.DataFrame) -> str:
    """Metrics as rows (best first on the first measure), measures as columns, on the pooled subset."""
    measures = list(dict.fromkeys(df["measure"]))
    subsets = list(dict.fromkeys(df["subset"]))
    overall = ALL if ALL in subsets else subsets[0]
    pooled = df[df["subset"] == overall]
    wide = pooled.pivot_table(index="metric", columns="measure", values="value", aggfunc="first")
    first = pooled[pooled["measure"] == measures[0]].set_index("metric")
    order = first["value"].sort_values(ascending=False).index
    n = int(first["n"].iloc[0])
    head = f"{task} — {overall}, n={n} (%; 95% CI of {measures[0]})"
    header = ["metric", *measures, "95% CI"]
    rows = []
    for metric in order:
        rec = first.loc[metric]
        rows.append([metric, *[f"{wide.loc[metric].get(m, float('nan')):.1f}" for m in measures],
                     f"[{rec['ci_low']:.1f}, {rec['ci_high']:.1f}]"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join([head] + [_row(r, widths) for r in [header, ["-" * w for w in widths], *rows]])
