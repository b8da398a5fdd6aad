"""The ``percepbench`` command line.

Exit codes: 0 success; 2 usage error or bad input (unknown name, bad flag, unreadable config or data,
also when found part-way through a run: the results written so far are kept); 1 failure (a metric failed
while running, missing weights, other unexpected errors).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

from percepbench.errors import DataError, OfflineError, UsageError, WeightsError, user_message

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="score metrics on tasks and write a results directory",
        description="Score metrics on tasks. With no arguments: every metric usable offline on the built-in "
                    "offline benchmark severity2afc.",
    )
    p.add_argument("--metrics", "-m", help="comma-separated metric names or globs (default: all usable offline)")
    p.add_argument("--tasks", "-t", help="comma-separated task names or globs (default: severity2afc)")
    _add_run_options(p)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of ``run`` after --metrics and --tasks (shared with ``analyze attributes``)."""
    p.add_argument("--out", "-o", help="output directory (default: runs/<timestamp>); one run at a time, and its "
                                       "results are overwritten only with --overwrite")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run whose results --out holds: its finished (task, metric) pairs are kept, "
                        "the others run; metrics, tasks, their options, seed, precision and n-boot must match")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the results --out holds (results.json, samples.parquet and the report's files "
                        "are removed; other files stay)")
    p.add_argument("--strict", action="store_true", default=None,
                   help="stop before anything runs when a metric's weights or a task's data are missing (by "
                        "default every other pair runs, the missing ones are recorded, and the exit code is 1)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--resize", metavar="[NAME=]SIZE", action="append",
                   help="load size for metrics without a fixed input size (e.g. 256 or 256x256, bicubic), so they "
                        "run on data of mixed image sizes; NAME=SIZE for one metric or task (psnr=256, "
                        "task:kadid10k=384, 'piq.*=128'), repeatable; recorded per (task, metric) in the protocol")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's, the physical cores); fewer when other processes "
                        "share the machine")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"],
                   help="fp32 (default), or run the metrics under torch.autocast in bf16/fp16 (faster on GPUs and "
                        "on CPUs with AVX512-BF16/AMX), or int8: dynamic int8 quantisation of the linear layers "
                        "of the metrics that support it (DreamSim; CPU only). Scores shift slightly; the "
                        "precision each metric computed in is recorded in the results")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the embedding step of embedding metrics (worth it on a GPU for large "
                        "runs; the first batches pay the compile time)")
    p.add_argument("--batch-size", type=int, help="items per batch (default 32)")
    p.add_argument("--num-workers", type=int,
                   help="DataLoader workers for file-based tasks (default: 0 on the CPU, up to 8 on CUDA)")
    p.add_argument("--seed", type=int, help="seed for generated tasks and bootstrap CIs (default 0)")
    p.add_argument("--data-root", help="root of downloaded datasets (default: $PERCEPBENCH_DATA)")
    p.add_argument("--n-boot", type=int, help="bootstrap resamples for CIs (default 1000)")
    p.add_argument("--metric-args", action="append", metavar="NAME:KEY=VALUE,...",
                   help="per-metric options, repeatable (e.g. ms_ssim:scales=3); a list value joins its items "
                        "with '+' (e.g. dreamsim:input_range=-1+1)")
    p.add_argument("--task-args", action="append", metavar="NAME:KEY=VALUE,...",
                   help="per-task options, repeatable (e.g. severity2afc:per_family=8,size=64); a list value "
                        "joins its items with '+' (e.g. severity2afc:families=blur+noise)")
    p.add_argument("--embed-cache", metavar="DIR",
                   help="on-disk embedding cache for embedding metrics on file-based tasks (default: "
                        "$PERCEPBENCH_EMBED_CACHE or <weights cache>/embeddings)")
    p.add_argument("--no-embed-cache", action="store_true",
                   help="do not read or write the embedding cache (each unique image is still embedded once)")
    p.add_argument("--config", "-c", help="YAML or TOML file of run settings; flags override it")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true",
                   help="do not write the report (figures, report.html, report.md) into <out>/report")


#: ``analyze attributes --analyses`` names -> task names
ANALYSES = {"curves": "attr_curves", "contests": "attr_contests", "reliance": "attr_reliance"}


def _add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="what metrics are sensitive to: attribute analyses, feature inversion",
                       description="Analyses of metric behaviour (REFERENCE §7), offline by default.")
    asub = p.add_subparsers(dest="analyze_command", metavar="ANALYSIS")
    asub.required = True
    q = asub.add_parser(
        "attributes", help="edit curves, attribute contests and foreground/background reliance per metric",
        description="Run the attribute analyses (tasks attr_curves, attr_contests, attr_reliance) as one "
                    "`percepbench run`: results.json, samples.parquet and the report as for any run, so "
                    "`compare` gates them. Offline by default (the photographs bundled with scikit-image and "
                    "scikit-learn).")
    q.add_argument("--metrics", "-m", help="comma-separated metric names or globs (default: all usable offline)")
    q.add_argument("--analyses", default="curves,contests,reliance",
                   help="comma-separated: curves, contests, reliance (default: all three)")
    q.add_argument("--pool", choices=["bundled", "composites", "folder", "coco"],
                   help="image pool of the curves and contests (default bundled); reliance needs masks and uses "
                        "composites unless the pool is a folder")
    q.add_argument("--path", help="folder of images for --pool folder (masks in <folder>/masks/<stem>.png), or the "
                                  "coco folder for --pool coco (default <data root>/coco)")
    q.add_argument("--images", type=int, help="images in the pool (default 12)")
    q.add_argument("--size", type=int, help="image side in pixels (default 96)")
    q.add_argument("--match-by", metavar="METRIC",
                   help="contests: match the two edits by this metric's distance instead of pixel RMS")
    q.add_argument("--attributes", help="attributes of the curves (and contests), '+'-separated, e.g. hue+blur+noise "
                                        "(default: every attribute the pool supports)")
    _add_run_options(q)
    from percepbench.inversion_options import add_inversion_parser

    add_inversion_parser(asub)


def _add_fetch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download everything a run needs: its metrics' weights and its tasks' data",
                       description="Fetch, for the metrics and tasks a `percepbench run` would use, every missing "
                                   "weight file (`weights download`) and every dataset the tasks read (`data "
                                   "download`); what is present is checked, not fetched again. Exit 0 when "
                                   "everything is in place, 1 when something could not be fetched (each listed).")
    p.add_argument("--metrics", "-m", help="comma-separated metric names or globs (default: all)")
    p.add_argument("--tasks", "-t", help="comma-separated task names or globs (default: severity2afc)")
    p.add_argument("--data-root", help="data root (default: $PERCEPBENCH_DATA or ~/.cache/percepbench/data)")
    p.add_argument("--cache", help="weights cache dir (default: $PERCEPBENCH_CACHE or <torch hub>/percepbench)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write figures, report.html and report.md for a results directory",
                       description="Build the report of a run directory (a pure function of its result files).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a results directory written by `percepbench run`")
    p.add_argument("--out", "-o", help="output folder (default: RUN_DIR/report)")
    p.add_argument("--formats", default="png,svg", help="figure file formats, comma-separated (png, svg, pdf)")


def _add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="gate on regressions between a baseline run and a new run",
        description="Align the records of two runs by task, subset, metric and measure, and flag a regression "
                    "when a score drops by more than --max-drop points AND the drop is significant at --alpha "
                    "(paired on per-item samples when both runs have them); a drop beyond --max-drop whose "
                    "significance cannot be judged (no CI, no samples) and a NaN or infinite value fail too. "
                    "Exit 0: nothing fails; 1: a regression, an unjudged drop, a non-finite value or a baseline "
                    "row missing from the new run; 2: incompatible or unreadable inputs, or an output path that "
                    "would overwrite a file of either run. The Markdown summary is appended to "
                    "$GITHUB_STEP_SUMMARY when it is set.")
    p.add_argument("baseline", metavar="BASELINE", help="baseline run directory or results.json")
    p.add_argument("new", metavar="NEW", help="new run directory or results.json")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="tolerated drop in points of the measure (default 1.0)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML (one test case per compared row)")
    p.add_argument("--markdown", metavar="FILE", help="write the Markdown summary")
    p.add_argument("--allow-missing", action="store_true",
                   help="rows of the baseline missing from the new run are not a failure")


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="download and verify the benchmark datasets (nights, bapps, things, imagenet_r, "
                                        "coco)",
                       description="Download (resume, verify, safe extraction) and check benchmark datasets under "
                                   "the data root (--root, else $PERCEPBENCH_DATA, else ~/.cache/percepbench/data).")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    dsub.add_parser("list", help="the datasets, their parts, sizes and sources")
    for name, text in (("download", "download and extract a dataset (idempotent: present parts are skipped)"),
                       ("verify", "name every missing or unreadable file, with the command that fixes it")):
        q = dsub.add_parser(name, help=text, description=text)
        q.add_argument("name", metavar="NAME", help="a dataset: nights, bapps, things, imagenet_r, coco, or a plugin's "
                                                     "(`percepbench data list`)")
        q.add_argument("--root", help="data root (default: $PERCEPBENCH_DATA or ~/.cache/percepbench/data)")
        q.add_argument("--parts", help="comma-separated parts (nights: csv, ref, distort, zip; bapps: jnd, "
                                       "twoafc_val, twoafc_train, all; coco: val2017, instances_val2017)")
        if name == "download":
            q.add_argument("--keep-archives", action="store_true", help="keep the archives after extraction")
            q.add_argument("--force", action="store_true",
                           help="fetch and extract the selected parts again even if they are marked done")
            q.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        else:
            q.add_argument("--deep", action="store_true", help="also decode every image and label file")


def _add_list_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered metrics and tasks")
    p.add_argument("what", nargs="?", choices=["metrics", "tasks", "all"], default="all")
    p.add_argument("--pattern", "-p", default="*", help="glob over names (e.g. 'piq.*')")
    p.add_argument("--options", action="store_true",
                   help="also each entry's options (--metric-args / --task-args) with their types and defaults")


def _add_weights_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list, download, verify and locate metric weights",
                       description="Manage the weight files of registered metrics (one cache, one downloader).")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    wsub.required = True
    for name, text in (("list", "files per metric: source (URL, or the installed package that ships it), size, "
                                "sha256, present or not"),
                       ("download", "download (resume, verify) every file of the named metrics"),
                       ("verify", "re-hash present files against their known or recorded sha256 (files "
                                  "shipped in a package against their known sha256)"),
                       ("path", "print the cache directory, or the paths of a metric's files")):
        q = wsub.add_parser(name, help=text, description=text)
        nargs = "+" if name == "download" else "*"
        q.add_argument("names", nargs=nargs, metavar="NAME", help="metric names or globs (default: all with weights)")
        q.add_argument("--cache", help="weights cache dir (default: $PERCEPBENCH_CACHE or <torch hub>/percepbench)")
        if name == "download":
            q.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from percepbench import __version__

    parser = argparse.ArgumentParser(
        prog="percepbench", description="Evaluation suite for perceptual image-similarity metrics."
    )
    parser.add_argument("--version", action="version", version=f"percepbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_run_parser(sub)
    _add_analyze_parser(sub)
    _add_fetch_parser(sub)
    _add_report_parser(sub)
    _add_compare_parser(sub)
    _add_list_parser(sub)
    _add_weights_parser(sub)
    _add_data_parser(sub)
    from percepbench.train_cli import add_train_parser

    add_train_parser(sub)
    return parser


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.analyze_command == "inversion":
        from percepbench.inversion import cmd_inversion

        return cmd_inversion(args)
    from percepbench.config import split_list

    names = split_list(args.analyses) or []
    unknown = [n for n in names if n not in ANALYSES]
    if unknown or not names:
        raise UsageError(f"--analyses takes {', '.join(ANALYSES)} (comma-separated), got {args.analyses!r}")
    common: dict[str, Any] = {}
    if args.images is not None:
        common["images"] = args.images
    if args.size is not None:
        common["size"] = args.size
    if args.path is not None:
        common["path"] = args.path
    task_args: dict[str, dict[str, Any]] = {}
    for name in names:
        options = dict(common)
        pool = args.pool
        if name == "reliance" and pool == "bundled":
            pool = None  # the bundled crops have no masks: reliance keeps its composites
        if pool is not None:
            options["pool"] = pool
        if args.attributes and name in ("curves", "contests"):
            options["attributes"] = args.attributes
        if args.match_by and name == "contests":
            options["match_by"] = args.match_by
        task_args[ANALYSES[name]] = options
    return cmd_run(args, tasks=[ANALYSES[n] for n in names], extra_task_args=task_args)


def cmd_run(args: argparse.Namespace, *, tasks: list[str] | None = None,
            extra_task_args: dict[str, dict[str, Any]] | None = None) -> int:
    """``percepbench run`` (and ``analyze attributes``, which passes its ``tasks`` and their options, merged
    under any ``--task-args``)."""
    from percepbench.config import build_config, check_names, load_config_file, parse_name_args, split_list

    file_values = load_config_file(args.config) if args.config else {}
    task_args = parse_name_args(args.task_args, "--task-args") if args.task_args else None
    if extra_task_args:
        task_args = {name: {**extra_task_args.get(name, {}), **(task_args or {}).get(name, {})}
                     for name in {*extra_task_args, *(task_args or {})}}
    flags: dict[str, Any] = {
        "metrics": split_list(args.metrics) if args.metrics else None,
        "tasks": tasks if tasks is not None else split_list(args.tasks) if args.tasks else None,
        "out": args.out, "device": args.device, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "seed": args.seed, "data_root": args.data_root,
        "n_boot": args.n_boot,
        "metric_args": parse_name_args(args.metric_args, "--metric-args") if args.metric_args else None,
        "task_args": task_args,
        "progress": False if args.quiet else None,
        "embed_cache": False if args.no_embed_cache else args.embed_cache,
        "precision": args.precision,
        "resume": args.resume, "overwrite": args.overwrite, "strict": args.strict, "threads": args.threads,
        "resize": args.resize, "compile": args.compile,
    }
    config = build_config(file_values, flags)
    check_names(config)  # a misspelt name fails here, before torch and the runner are imported
    from percepbench.reports import summary_table
    from percepbench.runner import run

    report: dict[str, Any] = {}

    def build(results: Any) -> None:  # called by run() while the run directory is still locked
        if args.no_report:
            return
        from percepbench.reports import build_report

        try:
            report["written"] = build_report(results.path)
        except Exception as exc:  # the results are written; a report problem must not hide them
            report["error"] = exc

    results = run(config, finish=build)
    from percepbench.distributed import is_main

    if not is_main():  # under torchrun, rank 0 prints the results and its exit code is the run's
        return EXIT_OK
    print(summary_table(results.records, random_weights=results.meta.get("random_weights") or ()))
    failed = results.meta.get("failed") or []
    for f in failed:
        print(f"FAILED {f['metric']} on {f['task']}: {f['error']}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} metric/task pair(s) failed; the others' results are complete", file=sys.stderr)
    print(f"\nresults: {results.path}")
    report_failed = "error" in report
    if report_failed:
        exc = report["error"]
        print(f"percepbench run: the report could not be built ({type(exc).__name__}: {exc}); the results "
              f"are complete, retry with `percepbench report {results.path}`", file=sys.stderr)
    elif "written" in report:
        print(f"report:  {report['written']['html']}")
    if any(f.get("kind") == "data" for f in failed):
        return EXIT_USAGE  # bad input data (unreadable image, mixed sizes): exit 2, results so far kept
    return EXIT_FAILURE if failed or report_failed else EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    """``percepbench fetch``: every weight file of the selected metrics, every dataset of the selected tasks."""
    from percepbench.config import split_list
    from percepbench.data import data_root, download_dataset
    from percepbench.errors import PercepbenchError
    from percepbench.registry import METRICS, TASKS
    from percepbench.weights import ensure_weights

    metrics = METRICS.select(split_list(args.metrics)) if args.metrics else METRICS.specs()
    tasks = TASKS.select(split_list(args.tasks) if args.tasks else ["severity2afc"])
    failures = []
    for spec in metrics:
        if not spec.weights:
            continue
        try:
            ensure_weights(spec, args.cache, progress=not args.quiet)
            print(f"weights {spec.name}: ready")
        except PercepbenchError as exc:
            failures.append(f"weights {spec.name}: {user_message(exc)}")
    root = data_root(args.data_root)
    for name in dict.fromkeys(t.dataset for t in tasks if t.dataset):
        try:
            print(f"data {name}: ready in {download_dataset(name, root, progress=not args.quiet)}")
        except PercepbenchError as exc:
            failures.append(f"data {name}: {user_message(exc)}")
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return EXIT_FAILURE if failures else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from percepbench.reports import build_report

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    try:
        written = build_report(args.run_dir, args.out, formats=formats)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(f"{len(written['figures'])} figure file(s) in {written['out_dir']}")
    print(f"report: {written['html']}")
    print(f"        {written['markdown']}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from percepbench.reports.compare import main_compare

    return main_compare(args.baseline, args.new, max_drop=args.max_drop, alpha=args.alpha, junit=args.junit,
                        markdown=args.markdown, allow_missing=args.allow_missing)


def cmd_data(args: argparse.Namespace) -> int:
    from percepbench.data import data_root, download_dataset, trust_notes, verify_dataset
    from percepbench.registry import DATASETS

    if args.data_command == "list":
        root = data_root()
        print(f"data root: {root}")
        for source in DATASETS.specs():
            name = source.name
            present = "present" if not verify_dataset(name, root) else "missing or incomplete"
            origin = "" if (where := DATASETS.source(name)) == "builtin" else f" [{where}]"
            print(f"  {name}: {source.title} ({source.approx_size}; {present}){origin}")
            print(f"      {source.description}")
            parts = list(source.default_parts)
            shown = ", ".join(parts) if len(parts) <= 6 else f"{', '.join(parts[:3])}, ... ({len(parts)} parts)"
            groups = f"; groups: {', '.join(source.groups)}" if source.groups else ""
            print(f"      default parts: {shown or '-'}{groups}; from {source.resolved_base_url()}")
            print(f"      licence: {source.licence}")
        return EXIT_OK
    if args.data_command == "download":
        folder = download_dataset(args.name, args.root, parts=args.parts, progress=not args.quiet,
                                  keep_archives=args.keep_archives, force=args.force)
        print(f"{args.name}: ready in {folder}")
        return EXIT_OK
    problems = verify_dataset(args.name, args.root, parts=args.parts, deep=args.deep)
    for problem in problems:
        print(f"  PROBLEM  {problem}")
    for note in trust_notes(args.name, args.root, parts=args.parts):  # what each download was checked against
        print(f"  sha256   {note}")
    if problems:
        print(f"{args.name}: {len(problems)} problem(s) under {data_root(args.root)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.name}: ok under {data_root(args.root)}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from percepbench.config import TORCHMETRICS_OPTIONS
    from percepbench.registry import METRICS, TASKS
    from percepbench.weights import missing_weights

    def names(reg) -> list:
        return reg.specs() if args.pattern == "*" else reg.select(args.pattern)

    if args.what in ("metrics", "all"):
        specs = names(METRICS)
        defaults = {v: k for k, v in METRICS.defaults().items()}
        print(f"metrics ({len(specs)}):")
        width = max((len(s.name) for s in specs), default=0) + 2
        for s in specs:
            missing = missing_weights(s)
            status = "no weights needed" if not s.weights else (
                "weights present" if not missing else f"weights MISSING: {', '.join(missing)}")
            alias = f" (default for '{defaults[s.name]}')" if s.name in defaults else ""
            source = METRICS.source(s.name)
            origin = "" if source == "builtin" else f" [{source}]"
            print(f"  {s.name.ljust(width)}{s.description}{alias}{origin}")
            print(f"  {'':{width}}distance: {s.distance}; {status}"
                  + (f"; as a loss: gradient NaN on {s.nan_gradient}" if s.nan_gradient else ""))
            if args.options:
                print(f"  {'':{width}}options: {_options_text(s, hidden=TORCHMETRICS_OPTIONS | {'reduction'})}")
    if args.what in ("tasks", "all"):
        specs = names(TASKS)
        if args.what == "all":
            print()
        print(f"tasks ({len(specs)}):")
        width = max((len(s.name) for s in specs), default=0) + 2
        for s in specs:
            data = ("built in, no download" if not s.needs_data
                    else _data_status(s.dataset) if s.dataset
                    else "reads your data (path=, see `percepbench list tasks --options`)")
            print(f"  {s.name.ljust(width)}{s.description}")
            print(f"  {'':{width}}{s.kind}, {s.measure}; {data}")
            if args.options:
                print(f"  {'':{width}}options: {_options_text(s)}")
    return EXIT_OK


def _data_status(dataset: str) -> str:
    """``"data present in <root>"`` or ``"data MISSING: percepbench data download <name> --root <root>"``."""
    from percepbench.data import data_root, download_command, verify_dataset

    root = data_root(None)
    try:
        problems = verify_dataset(dataset, root)
    except Exception as exc:  # a listing must not fail on one dataset's check
        return f"data status unknown ({type(exc).__name__}: {exc})"
    if not problems:
        return f"data present in {root}"
    return f"data MISSING or incomplete in {root}: `{download_command(dataset, root)}`"


def _options_text(spec: Any, hidden: Iterable[str] = ()) -> str:
    from percepbench.config import describe_options

    try:
        factory = spec.load()
    except ImportError as exc:
        return f"(cannot import {spec.target}: {exc})"
    return describe_options(factory, hidden=hidden, fixed=dict(spec.kwargs))


def cmd_weights(args: argparse.Namespace) -> int:
    from percepbench.weights import cache_dir

    action = args.weights_command
    if action == "path" and not args.names:  # the cache directory: no metric needs to be imported for it
        print(cache_dir(args.cache))
        return EXIT_OK
    from percepbench.download import trust_level
    from percepbench.registry import METRICS
    from percepbench.weights import ensure_weights, is_present, verify_weight, weight_path

    specs = METRICS.select(args.names) if args.names else [s for s in METRICS.specs() if s.weights]
    failures = 0
    for spec in specs:
        if not spec.weights:
            print(f"{spec.name}: no weight files needed")
            continue
        if action == "download":
            root = ensure_weights(spec, args.cache, progress=not args.quiet)
            print(f"{spec.name}: ready in {root}")
            continue
        print(f"{spec.name}:")
        for w in spec.weights:
            try:
                path = weight_path(w, args.cache)
            except WeightsError as exc:  # shipped in a package that is not installed
                print(f"  [MISSING] {exc}" if action == "list" else f"  MISSING  {exc}")
                failures += action == "verify"
                continue
            present = is_present(w, args.cache)
            if action == "path":
                print(f"  {path}" + (f"  (extracted: {w.extract_to})" if w.extract_to else ""))
            elif action == "list":
                size = f"{w.size} bytes" if w.size else "size unknown"
                digest = w.sha256 or (f"{w.sha256_prefix}... (prefix)" if w.sha256_prefix else "sha256 unknown")
                print(f"  [{'present' if present else 'MISSING'}] {path}")
                print(f"      {w.source}; {size}; {digest}")
            elif action == "verify":
                if not present:
                    print(f"  MISSING  {path.parent / w.extract_to if w.extract_to else path}")
                    failures += 1
                elif w.extract_to and not path.is_file():
                    print(f"  ok       {path.parent / w.extract_to} (extracted; archive not kept)")
                else:
                    try:
                        digest = verify_weight(w, args.cache)
                    except WeightsError as exc:
                        print(f"  FAILED   {exc}")
                        failures += 1
                    else:
                        # what the hash was checked against: a shipped file's package, else trust_level's words
                        note = w.source if w.cache == "package" else trust_level(w.sha256, w.sha256_prefix)
                        print(f"  ok       {path}  sha256 {digest}  ({note})")
    if failures:
        print(f"{failures} file(s) missing or failing verification", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from percepbench.train_cli import cmd_train

    return cmd_train(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit with 2
    handler = {"run": cmd_run, "analyze": cmd_analyze, "fetch": cmd_fetch, "report": cmd_report, "compare": cmd_compare, "list": cmd_list,
               "weights": cmd_weights, "data": cmd_data, "train": _cmd_train}[args.command]
    try:
        return handler(args)
    except (UsageError, DataError) as exc:
        print(f"percepbench {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except OfflineError as exc:  # offline mode or a failed download: the message lists every file, URL, place
        from percepbench.download import is_offline

        label = "offline" if is_offline() else "download failed"  # a network failure is not "offline"
        print(f"percepbench {args.command}: {label}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except WeightsError as exc:  # missing/corrupt weights or a failed download: the message lists files and URLs
        label = "download" if args.command == "data" else "weights"
        print(f"percepbench {args.command}: {label}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("percepbench: interrupted; results written so far are kept", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("PERCEPBENCH_DEBUG"):
            traceback.print_exc()
        print(f"percepbench {args.command}: failed: {type(exc).__name__}: {user_message(exc)} "
              "(set PERCEPBENCH_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
