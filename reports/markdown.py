"""``report.md``: GitHub-flavoured Markdown sized for a CI job summary (``$GITHUB_STEP_SUMMARY``).

Headline table per task (metric, pooled value, 95% CI, n, and per-subset columns when there are at most
:data:`MAX_SUBSET_COLUMNS`), failures, a short protocol section and the PNG figures linked by relative
path. Cell text is escaped (``|``, ``<``, ``>``, ``&``, backticks, emphasis and link brackets) so that a
metric name or an error message cannot break a table or inject HTML. Long tables are cut at
:data:`MAX_ROWS` rows with a pointer to ``report.html``; the text stays far below GitHub's 1 MiB summary
limit.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from percepbench.reports.build import ReportContent, Table

MAX_SUBSET_COLUMNS = 6
MAX_ROWS = 200
MAX_CELL = 300
MAX_CHARS = 900_000


def md_escape(text: Any) -> str:
    """Make any text safe for one Markdown table cell.

    >>> md_escape("a|b <i>x</i> *y* `z` [l](u)\\nnext")
    'a\\\\|b &lt;i&gt;x&lt;/i&gt; \\\\*y\\\\* \\\\`z\\\\` \\\\[l\\\\](u) next'
    """
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"([\\|*`\[\]])", r"\\\1", s)
    s = re.sub(r"\s*[\r\n]+\s*", " ", s)
    if len(s) > MAX_CELL:
        s = s[:MAX_CELL].rstrip("\\") + " …"
    return s


def _fmt(value: Any, fmt: str) -> str:
    if isinstance(value, tuple) and len(value) == 2:
        lo, hi = (float(v) for v in value)
        if not (math.isfinite(lo) or math.isfinite(hi)):
            return "—"
        return f"[{_fmt(lo, fmt)}, {_fmt(hi, fmt)}]"
    if isinstance(value, int):  # bool included
        return str(value)
    if isinstance(value, float):
        return format(value, fmt) if math.isfinite(value) else "—"
    return md_escape(value)


def table_md(table: Table, *, columns: list[int] | None = None, max_rows: int = MAX_ROWS) -> str:
    """A GFM table of the chosen columns (all by default); numbers right-aligned."""
    if not table.rows:
        return ""
    cols = columns if columns is not None else list(range(len(table.columns)))
    numeric = [not isinstance(table.rows[0][c], str) for c in cols]
    lines = ["| " + " | ".join(md_escape(table.columns[c]) for c in cols) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in table.rows[:max_rows]:
        lines.append("| " + " | ".join(_fmt(row[c], table.fmt) for c in cols) + " |")
    if len(table.rows) > max_rows:
        lines.append(f"\n_{len(table.rows) - max_rows} more rows in report.html._")
    return "\n".join(lines)


def _image(name: str, title: str, fmt: str) -> str:
    alt = re.sub(r"[\[\]\\]", "", title.replace("\n", " "))
    return f"![{alt}]({name}.{fmt})"


def render_markdown(content: ReportContent, *, image_format: str | None = "png") -> str:
    """The Markdown report as a string; figures are linked as ``<name>.<image_format>`` (none if None)."""
    meta = content.meta
    out: list[str] = ["# percepbench report", ""]
    info = dict(content.run_info)
    sha = info.get("git sha", "—")
    out.append(f"percepbench {md_escape(info.get('percepbench', '—'))} · git {md_escape(sha[:12])} · "
               f"device {md_escape(info.get('device', '—'))} · "
               + (f"precision {md_escape(info['precision'])} · " if info.get("precision", "fp32") != "fp32" else "")
               + f"torch {md_escape(info.get('torch', '—'))} · "
               f"seed {md_escape(info.get('seed', '—'))} · started {md_escape(info.get('started', '—'))} · "
               f"finished {md_escape(info.get('finished', '—'))} · "
               + ("**complete**" if content.complete else "**incomplete**"))
    out.append("")
    for note in content.notes:
        out += [f"> **Note:** {md_escape(note)}", ""]

    out += ["## Results", ""]
    for task in content.tasks:
        spec = meta["tasks"].get(task) or {}
        out += [f"### {md_escape(task)}", ""]
        if spec.get("description"):
            out += [f"_{md_escape(spec['description'])}_", ""]
        tables = content.headline.get(task) or []
        if not tables:
            out += ["No records for this task.", ""]
        for t in tables:
            cols = None
            if t.columns[:4] == ["metric", t.columns[1], "95% CI", "n"] and len(t.columns) - 4 > MAX_SUBSET_COLUMNS:
                cols = [0, 1, 2, 3]
                t_note = f"\n\n_{len(t.columns) - 4} per-subset columns in report.html._"
            else:
                t_note = ""
            out += [f"**{md_escape(t.title)}**", "", table_md(t, columns=cols) + t_note, ""]
        if image_format:
            for fig in content.figures:
                if fig.task == task:
                    # a figure written only as PNG (the nearest-neighbour grid) is linked in a format it has
                    suffixes = [f.suffix.lstrip(".") for f in fig.files]
                    fmt = image_format if not suffixes or image_format in suffixes else suffixes[0]
                    out += [_image(fig.name, fig.title, fmt), ""]

    out += ["## Failures", ""]
    if content.failures.rows:
        out += [table_md(content.failures), ""]
    else:
        out += ["None.", ""]

    out += ["## Protocol", ""]
    if content.protocol.rows:
        out += [table_md(content.protocol, columns=[0, 1, 2, 3, 6]), ""]
    else:
        out += ["No protocol rows recorded.", ""]
    for task, proto in content.task_protocols.items():
        if isinstance(proto, dict) and proto:
            items = "; ".join(f"{md_escape(k)}: {md_escape(_short(v))}" for k, v in proto.items())
            out += [f"- **{md_escape(task)}** — {items}"]
    out += ["", "Figures, paired comparisons, metric specs and the full configuration: report.html.", ""]
    text = "\n".join(out)
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit("\n", 1)[0] + "\n\n_… cut to fit a job summary; see report.html._\n"
    return text


def _short(value: Any, limit: int = 160) -> str:
    if isinstance(value, dict):
        value = ", ".join(f"{k}={_short(v, 60)}" for k, v in value.items())
    elif isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    s = str(value)
    return s if len(s) <= limit else s[:limit] + " …"
