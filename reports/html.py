"""``report.html``: one self-contained page (inline SVG figures, inline CSS and JS, no network access).

Every string that comes from a results file (metric and task names, errors, paths, config values) goes
through :func:`html.escape`; figures are matplotlib SVG with text as ``<text>`` (escaped by matplotlib),
their ids prefixed per figure so that several inline SVGs never share an id. A Content-Security-Policy
meta tag forbids every external load, so a reference that slipped in fails loudly in the browser console
instead of fetching anything. Tables with class ``sortable`` sort on a click on a header (numbers
numerically, from each cell's ``data-sort``; missing values last).
"""

from __future__ import annotations

import html
import json
import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from percepbench.reports.build import FigureEntry, ReportContent, Table

_CSS = """
:root { color-scheme: light; --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --accent: #2155a3; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
header, main, nav { max-width: 1200px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { margin: 0 0 4px; font-size: 1.6rem; }
h2 { margin-top: 2.2rem; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { margin-top: 1.6rem; }
.lead { color: var(--muted); margin: 0 0 10px; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 16px; }
nav a { color: var(--accent); text-decoration: none; }
.note { border-left: 4px solid #d08a00; background: #fff7e6; padding: 8px 12px; margin: 8px 0; }
.ok { border-left-color: #2e8b57; background: #eef8f1; }
.table-wrap { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; }
th { background: #f4f6f9; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th::after { content: " \\2195"; color: #a0a7b4; }
table.sortable th[aria-sort="ascending"]::after { content: " \\2191"; color: var(--fg); }
table.sortable th[aria-sort="descending"]::after { content: " \\2193"; color: var(--fg); }
td.err { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap; word-break: break-word; }
figure { margin: 16px 0 28px; }
figure .svg svg { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; }
dl.kv dt { font-weight: 600; } dl.kv dd { margin: 0; word-break: break-word; }
pre { background: #f4f6f9; padding: 10px; overflow-x: auto; font-size: 12px; }
details > summary { cursor: pointer; color: var(--accent); }
"""

_JS = """
(function () {
  "use strict";
  function sortKey(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) { raw = cell.textContent.trim(); }
    if (raw === "") { return null; }
    var num = Number(raw);
    return isFinite(num) ? num : raw.toLowerCase();
  }
  function compare(a, b) {
    if (a === null || b === null) { return a === b ? 0 : (a === null ? 1 : -1); }
    if (typeof a === "number" && typeof b === "number") { return a - b; }
    if (typeof a === "number") { return -1; }
    if (typeof b === "number") { return 1; }
    return a < b ? -1 : (a > b ? 1 : 0);
  }
  function sortBy(table, th, col) {
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var headers = table.tHead.rows[0].cells;
    for (var i = 0; i < headers.length; i++) { headers[i].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, index) {
      return { row: row, key: sortKey(row.cells[col]), index: index };
    });
    rows.sort(function (x, y) {
      if (x.key === null || y.key === null) { return compare(x.key, y.key) || x.index - y.index; }
      var c = compare(x.key, y.key);
      return (ascending ? c : -c) || x.index - y.index;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    if (!table.tHead || !table.tBodies.length) { return; }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(table, th, col); }
      });
    });
  });
})();
"""

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
        "font-src data:")


def esc(value: Any) -> str:
    """HTML-escape any value's ``str`` (quotes included).

    >>> esc("<script>alert('x')</script>")
    '&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;'
    """
    return html.escape(str(value), quote=True)


def _fmt(value: float, fmt: str) -> str:
    return format(value, fmt) if math.isfinite(value) else "—"


def cell(value: Any, fmt: str = ".1f") -> str:
    """One ``<td>``: numbers right-aligned with a ``data-sort`` key, a (low, high) pair as ``[low, high]``.

    >>> cell(3.14159, ".2f"), cell(float("nan")), cell("a<b")
    ('<td class="num" data-sort="3.14159">3.14</td>', '<td class="num" data-sort="">—</td>', '<td>a&lt;b</td>')
    """
    if isinstance(value, tuple) and len(value) == 2:
        lo, hi = (float(v) for v in value)
        if not (math.isfinite(lo) or math.isfinite(hi)):
            return '<td class="num" data-sort="">—</td>'
        return f'<td class="num" data-sort="{esc(repr(lo))}">[{_fmt(lo, fmt)}, {_fmt(hi, fmt)}]</td>'
    if isinstance(value, bool):
        return f"<td>{esc(value)}</td>"
    if isinstance(value, int):
        return f'<td class="num" data-sort="{value}">{value}</td>'
    if isinstance(value, float):
        key = repr(value) if math.isfinite(value) else ""
        return f'<td class="num" data-sort="{esc(key)}">{_fmt(value, fmt)}</td>'
    return f"<td>{esc(value)}</td>"


def table_html(table: Table, *, sortable: bool = True, error_column: str | None = None) -> str:
    """A ``<table>`` of :class:`~percepbench.reports.build.Table` (sortable unless told otherwise)."""
    if not table.rows:
        return ""
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in table.columns)
    err = table.columns.index(error_column) if error_column in table.columns else -1
    body = []
    for row in table.rows:
        cells = [f'<td class="err">{esc(v)}</td>' if i == err else cell(v, table.fmt) for i, v in enumerate(row)]
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="lead">{esc(table.note)}</p>' if table.note else ""
    return (f'<div class="table-wrap"><table id="{esc(table.key)}"{cls}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{note}')


_ID_RE = re.compile(r'\bid="([^"]+)"')


def inline_svg(svg: str, prefix: str) -> str:
    """A matplotlib SVG document made fit to inline: no XML prolog, doctype or metadata, and every id
    (with the ``url(#...)`` and ``href="#..."`` references to it) prefixed with ``prefix``.

    >>> inline_svg('<?xml version="1.0"?>\\n<svg><clipPath id="p1"/><g clip-path="url(#p1)"/></svg>', "f")
    '<svg><clipPath id="f-p1"/><g clip-path="url(#f-p1)"/></svg>'
    """
    svg = re.sub(r"<\?xml[^>]*\?>\s*", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>\s*", "", svg)
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    ids = set(_ID_RE.findall(svg))
    p = re.sub(r"[^A-Za-z0-9_-]", "_", prefix)

    def fix(m: re.Match) -> str:
        return m.group(0).replace(m.group(2), f"{p}-{m.group(2)}") if m.group(2) in ids else m.group(0)

    svg = re.sub(r'(\bid=")([^"]+)(")', fix, svg)
    svg = re.sub(r"(url\(#)([^)]+)(\))", fix, svg)
    svg = re.sub(r'(href="#)([^"]+)(")', fix, svg)
    return svg.strip()


def _value_html(value: Any) -> str:
    if isinstance(value, dict):
        if not value:
            return "—"
        items = "".join(f"<dt>{esc(k)}</dt><dd>{_value_html(v)}</dd>" for k, v in value.items())
        return f'<dl class="kv">{items}</dl>'
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            return esc(", ".join(str(v) for v in value)) or "—"
        return "<ol>" + "".join(f"<li>{_value_html(v)}</li>" for v in value) + "</ol>"
    return "—" if value is None or value == "" else esc(value)


def _figure_html(fig: FigureEntry) -> str:
    files = ", ".join(p.name for p in fig.files)
    caption = esc(fig.title) + (f" — files: {esc(files)}" if files else "")
    return (f'<figure id="fig-{esc(fig.name)}"><div class="svg">{inline_svg(fig.svg, fig.name)}</div>'
            f"<figcaption>{caption}</figcaption></figure>")


def _task_id(task: str) -> str:
    return "task-" + re.sub(r"[^A-Za-z0-9_-]", "_", task)


def render_html(content: ReportContent) -> str:
    """The whole report page as a string."""
    meta = content.meta
    title = "percepbench report" + (f" — {content.run_dir.name}" if content.run_dir else "")
    out: list[str] = []
    lead = (f"{len(content.tasks)} task(s), {len(meta['metrics'])} metric(s); "
            f"percepbench {meta['percepbench_version'] or '?'}, started {meta['started'] or '?'}")
    out.append(f"<header><h1>percepbench report</h1><p class=\"lead\">{esc(lead)}</p></header>")
    sections = [("results", "Results"), ("failures", "Failures"), ("comparisons", "Paired comparisons"),
                ("protocol", "Protocol"), ("metrics", "Metrics"), ("run", "Run"), ("records", "All records")]
    nav = "".join(f'<li><a href="#{sid}">{esc(name)}</a></li>' for sid, name in sections)
    task_nav = "".join(f'<li><a href="#{_task_id(t)}">{esc(t)}</a></li>' for t in content.tasks)
    out.append(f'<nav aria-label="contents"><ul>{nav}</ul><ul>{task_nav}</ul></nav><main>')
    status = ('<p class="note ok">Run complete.</p>' if content.complete else "")
    out.append(status + "".join(f'<p class="note">{esc(n)}</p>' for n in content.notes))

    out.append('<section id="results"><h2>Results</h2>')
    for task in content.tasks:
        spec = meta["tasks"].get(task) or {}
        desc = spec.get("description") or ""
        kind = spec.get("kind") or "?"
        out.append(f'<h3 id="{esc(_task_id(task))}">{esc(task)}</h3>'
                   f'<p class="lead">kind {esc(kind)}{" — " + esc(desc) if desc else ""}</p>')
        tables = content.headline.get(task) or []
        if not tables:
            out.append('<p class="note">No records for this task.</p>')
        for t in tables:
            out.append(f"<h4>{esc(t.title)}</h4>{table_html(t)}")
        for fig in content.figures:
            if fig.task == task:
                out.append(_figure_html(fig))
    out.append("</section>")

    out.append('<section id="failures"><h2>Failures</h2>')
    out.append(table_html(content.failures, error_column="error") if content.failures.rows
               else '<p class="note ok">No failed (task, metric) pairs.</p>')
    out.append("</section>")

    out.append('<section id="comparisons"><h2>Paired comparisons</h2>')
    if content.comparisons.rows:
        out.append(f"<details><summary>{len(content.comparisons.rows)} pairs on the pooled subset (paired "
                   "bootstrap CI of the difference, sign-flip permutation p-value)</summary>"
                   f"{table_html(content.comparisons)}</details>")
    else:
        out.append("<p>No paired comparisons in this run.</p>")
    out.append("</section>")

    out.append('<section id="protocol"><h2>Protocol</h2>')
    out.append(table_html(content.protocol) if content.protocol.rows else "<p>No protocol rows recorded.</p>")
    out.append("<h3>Task protocols</h3>")
    if content.task_protocols:
        for task, proto in content.task_protocols.items():
            out.append(f"<h4>{esc(task)}</h4>{_value_html(proto)}")
    else:
        out.append("<p>None recorded.</p>")
    out.append("</section>")

    out.append('<section id="metrics"><h2>Metrics</h2>')
    specs = meta["metrics"]
    if specs:
        rows = "".join(
            f"<tr><td>{esc(name)}</td><td>{esc(s.get('description', ''))}</td>"
            f"<td>{esc(s.get('distance', ''))}</td><td>{esc(s.get('reference', ''))}</td></tr>"
            for name, s in specs.items())
        out.append('<div class="table-wrap"><table id="metric-specs" class="sortable"><thead><tr><th>metric</th>'
                   "<th>description</th><th>distance</th><th>reference</th></tr></thead>"
                   f"<tbody>{rows}</tbody></table></div>")
    else:
        out.append("<p>No metric specs recorded.</p>")
    out.append("</section>")

    out.append('<section id="run"><h2>Run</h2><dl class="kv">')
    out.append("".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in content.run_info))
    out.append("</dl><h3>Configuration</h3>")
    config = json.dumps(meta["config"], indent=2, sort_keys=True, default=str)
    out.append(f"<pre>{esc(config)}</pre></section>")

    out.append('<section id="records"><h2>All records</h2>')
    out.append(f"<details><summary>{len(content.records.rows)} records (long format, as in results.json)"
               f"</summary>{table_html(content.records)}</details></section>")
    out.append("</main>")

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(out) + f"\n<script>{_JS}</script>\n</body></html>\n")
