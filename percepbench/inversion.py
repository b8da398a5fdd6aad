"""Feature inversion (``percepbench analyze inversion``): what does each metric recover of an image from noise?

After the "Optimization" figure of the DreamSim project page (no image prior; the paper's exact settings are
not published, so these are percepbench's own). For each target image ``t`` and each selected metric ``M``:

- **Parameterisation.** ``x = sigmoid(z)``, so the pixels stay in [0, 1] whatever the optimiser does; ``z``
  starts from standard normal noise drawn from ``numpy.random.default_rng([seed, k])`` for target ``k``, so
  every metric starts target ``k`` from the same noise image (saved as ``init.png``).
- **Optimisation.** Adam on ``z`` (``lr``, ``steps`` updates), minimising the sum over targets of
  ``M(x_k, t_k)``; the distance is per pair and Adam works element by element, so this is exactly one
  independent optimisation per target, run as one batch. Each step runs under
  :func:`percepbench.runner.precision_context` (``--precision bf16|fp16`` autocast on a GPU); a metric whose
  spec does not list that precision computes in fp32 as in ``percepbench run``. There is no loss scaling:
  under fp16 small gradients can underflow to zero, so bf16 is the safer half precision here.
- **The differentiable path.** The loss is :meth:`DistanceMetric.pairwise
  <percepbench.metrics_registry.base.DistanceMetric.pairwise>`: it validates and converts its inputs (the
  range check works on a detached copy) and calls the metric's ``distance`` in the metric's own precision,
  keeping autograd; ``forward``/``update`` would also store the value in the metric's state, and the runner
  calls the metrics under ``torch.inference_mode``, where no gradient exists. A metric whose spec has its
  own input size sees ``x`` and ``t`` resized to it with
  :func:`~percepbench.metrics_registry.base.resize_to_convention` (differentiable), as ``run`` loads files
  at the metric's size.
- **Metrics without a gradient.** After the first backward pass the gradient of ``z`` must exist and not be
  zero everywhere; otherwise (a distance that detaches its input, or is piecewise constant: argmax,
  rounding, thresholds) the metric cannot be used as a loss and is reported in ``meta.failed`` with kind
  ``"failure"`` and an error starting ``"no gradient:"``. A metric that raises, or whose loss stops being
  finite, is reported the same way (``"<exception type>: <message>"``). The other metrics still run.
- **Evaluation.** Each inversion is saved as an 8-bit PNG and then measured under **every** selected metric
  from that 8-bit image (so the numbers can be recomputed from the files): the cross-metric table, rows =
  the metric optimised with, columns = the metric evaluated by. ``loss_start``/``loss_end`` are the
  optimised metric's own loss of the float image at the start (the noise) and after the last step; they
  differ from ``distance:<M>`` only by the 8-bit rounding of the saved image.

Targets: the bundled photographs of :data:`percepbench.tasks.severity.PHOTOS` in :data:`PHOTO_ORDER` (the
first ``targets``), or every image file in an ``images`` folder (sorted by name; the first ``targets`` when
given); each is centre-cropped to a square and resized to ``size`` px (PIL bicubic).

The run directory (``out``)::

    results.json, samples.parquet     the standard results schema (percepbench.results), task "inversion"
    inversion/<target>/target.png     the target as optimised against (size x size)
    inversion/<target>/init.png       the noise every metric starts from
    inversion/<target>/<metric>.png   the inversion by each metric (name made file-safe)

Records (``subset`` ``"all"``, ``n`` = targets, 95% bootstrap CI over targets): per optimised-with metric
``M``, ``distance:<E>`` for every evaluator ``E`` (mean over targets of ``E(inversion_M(t), t)``), and
``loss_start``/``loss_end``. Samples: one row per (target, ``M``) with ``item`` = target id, the
``distance:<E>`` columns, ``start_loss``, ``end_loss``, ``start_gradient`` (false when this target's
pixels got no gradient at the first step while other targets' did: e.g. MS-SSIM clamped at its maximum
distance for the noise start), ``loss_curve`` (the loss after each step, ``steps``
+ 1 values, the first being ``start_loss``), the relative paths ``image``, ``target_image``, ``init_image``,
``seconds``, and ``score`` NaN (nothing to score). ``meta`` is ``run``'s (environment, times, precision,
seed, config, metric specs, weights, protocol, failed) with ``meta.tasks.inversion`` of kind ``"analysis"``
holding the settings and ``meta.task_protocols.inversion`` this protocol in words.

Results are written after every metric (``complete`` false until the end), under
:func:`percepbench.rundir.lock_run_dir`; an existing ``results.json`` is replaced only with ``overwrite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from percepbench.errors import DataError, UsageError
from percepbench.inversion_options import DEFAULT_LR, DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_TARGETS
from percepbench.metrics_registry.base import DistanceMetric, resize_to_convention
from percepbench.results import ALL, RESULTS_FILE, RunResults, records_frame, write_results
from percepbench.results_schema import Failure, ProtocolEntry, RunMeta
from percepbench.specs import MetricSpec
from percepbench.stats import DEFAULT_BOOTSTRAP, bootstrap_ci

log = logging.getLogger("percepbench")

TASK = "inversion"
#: the folder of the images inside the run directory
IMAGE_DIR = "inversion"
#: bundled photographs by file stem, objects and scenes first (the first ``targets`` are used)
PHOTO_ORDER = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "china", "flower", "ihc",
               "retina", "hubble_deep_field")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"})
NO_GRADIENT = "no gradient"


class NoGradientError(RuntimeError):
    """The metric's distance has no usable gradient with respect to the pixels."""


@dataclass
class InversionConfig:
    """The settings of one inversion run (the command line's flags; module docstring for their meaning).

    ``metrics=None``: every metric usable offline (:func:`percepbench.runner.select_metrics`).
    ``targets=None``: :data:`DEFAULT_TARGETS` bundled photographs, or every image of ``images``.
    """

    metrics: list[str] | None = None
    targets: int | None = None
    images: str | None = None
    size: int = DEFAULT_SIZE
    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"
    out: str | None = None
    overwrite: bool = False
    n_boot: int = DEFAULT_BOOTSTRAP
    metric_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Target:
    """One target image: its id (file-safe), where it came from and its pixels (uint8, size x size x 3)."""

    id: str
    source: str
    pixels: np.ndarray


@dataclass
class Inversion:
    """The outcome of optimising one metric against every target."""

    images: torch.Tensor  #: final float images in [0, 1], (T, 3, H, W), on the CPU
    start_loss: np.ndarray  #: (T,)
    end_loss: np.ndarray  #: (T,)
    curves: np.ndarray  #: (T, steps + 1): the loss before each step, then after the last one
    #: (T,): whether target k's pixels got a non-zero gradient at the first step (False: that target's
    #: optimisation could not move, e.g. a distance clamped at its maximum for the noise start)
    start_gradient: np.ndarray


def file_safe(name: str) -> str:
    """A name usable as one path component (metric and target names in image paths).

    >>> file_safe("piq.ssim"), file_safe("my photo/1"), file_safe("..")
    ('piq.ssim', 'my_photo_1', '_')
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip()
    return "_" if safe in ("", ".", "..") else safe


# -- options and targets --------------------------------------------------------------------------------------
def check_options(config: InversionConfig) -> None:
    """:class:`UsageError` for an option out of range (before anything is read or written)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(config.steps) or config.steps < 1:
        raise UsageError(f"--steps must be an integer >= 1, got {config.steps!r}")
    if not is_int(config.size) or config.size < 1:
        raise UsageError(f"--size must be an integer >= 1, got {config.size!r}")
    if config.targets is not None and (not is_int(config.targets) or config.targets < 1):
        raise UsageError(f"--targets must be an integer >= 1, got {config.targets!r}")
    lr = config.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise UsageError(f"--lr must be a finite number > 0, got {lr!r}")
    if not is_int(config.seed) or not 0 <= config.seed < 2**32:
        raise UsageError(f"--seed must be an integer from 0 to 2**32 - 1, got {config.seed!r}")
    if not is_int(config.n_boot) or config.n_boot < 1:
        raise UsageError(f"--n-boot must be an integer >= 1, got {config.n_boot!r}")


def square_resize(im: Image.Image, size: int) -> np.ndarray:
    """The centred square crop of ``im`` (side = its shorter side), resized to ``size`` px: uint8 (H, W, 3)."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    crop = im.convert("RGB").crop((left, top, left + side, top + side))
    if side != size:
        crop = crop.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(crop, dtype=np.uint8).copy()


def load_targets(config: InversionConfig) -> list[Target]:
    """The target images of ``config`` (module docstring). :class:`DataError` naming the folder or file
    when ``images`` is missing, holds no image, or an image cannot be read; :class:`UsageError` for more
    bundled targets than there are photographs."""
    if config.images is None:
        from percepbench.tasks.severity import PHOTOS, load_photo  # importing tasks registers the benchmarks

        stems = [Path(name).stem for _, name in PHOTOS]
        order = [stems.index(s) for s in PHOTO_ORDER if s in stems]
        order += [i for i in range(len(PHOTOS)) if i not in order]
        n = DEFAULT_TARGETS if config.targets is None else config.targets
        if n > len(order):
            raise UsageError(f"--targets {n}: only {len(order)} bundled photographs exist (use --images for more)")
        return [Target(stems[i], f"{PHOTOS[i][0]}/{PHOTOS[i][1]}",
                       square_resize(Image.fromarray(load_photo(i)), config.size)) for i in order[:n]]

    from percepbench.images import load_rgb

    folder = Path(config.images)
    if not folder.exists():
        raise DataError(f"{folder}: --images folder not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: --images must be a folder of images")
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the --images folder ({exc.strerror or exc})") from exc
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the --images folder")
    if config.targets is not None:
        files = files[:config.targets]
    targets: list[Target] = []
    taken: set[str] = set()
    for path in files:
        ident = file_safe(path.stem)
        if ident in taken:  # a.png and a.jpg
            ident = file_safe(path.name)
        while ident in taken:
            ident += "_"
        taken.add(ident)
        targets.append(Target(ident, str(path), square_resize(load_rgb(path), config.size)))
    return targets


def check_sizes(specs: list[MetricSpec], size: int) -> None:
    """:class:`UsageError` naming each metric that cannot take ``size`` px images (its ``min_size``)."""
    problems = [f"{s.name} needs at least {s.inputs.min_size} px" for s in specs
                if s.inputs.size is None and size < s.inputs.min_size]
    if problems:
        raise UsageError(f"--size {size} is too small: " + "; ".join(problems))


# -- the optimisation -----------------------------------------------------------------------------------------
def to_metric_input(x: torch.Tensor, spec: MetricSpec | None) -> torch.Tensor:
    """``x`` resized to the metric's own input size when its spec has one (differentiable), else ``x``."""
    return x if spec is None else resize_to_convention(x, spec.inputs)


def initial_logits(n_targets: int, size: int, seed: int) -> torch.Tensor:
    """The starting ``z`` (T, 3, size, size): standard normal noise, target ``k`` from ``default_rng([seed, k])``."""
    rows = [np.random.default_rng([seed, k]).standard_normal((3, size, size)) for k in range(n_targets)]
    return torch.from_numpy(np.stack(rows)).float()


def invert(metric: DistanceMetric, targets: torch.Tensor, *, steps: int, lr: float, seed: int,
           precision: str = "fp32", spec: MetricSpec | None = None, progress: bool = False,
           desc: str = "") -> Inversion:
    """Optimise ``x = sigmoid(z)`` from noise to minimise ``metric(x, targets)`` (module docstring).

    ``targets``: float [0, 1] (T, 3, H, W) on the metric's device. Raises :class:`NoGradientError` when the
    distance has no gradient with respect to the pixels, ``FloatingPointError`` when the loss stops being
    finite, and whatever the metric raises.
    """
    from tqdm.auto import tqdm

    from percepbench.runner import precision_context

    device = targets.device
    n = targets.shape[0]
    torch.manual_seed(seed)
    z = initial_logits(n, targets.shape[-1], seed).to(device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    goal = to_metric_input(targets, spec)
    name = spec.name if spec is not None else type(metric).__name__

    def loss_of(logits: torch.Tensor) -> torch.Tensor:
        with precision_context(device, precision):
            d = metric.pairwise(to_metric_input(torch.sigmoid(logits), spec), goal)
        return d.float()

    curves: list[torch.Tensor] = []
    moved = np.ones(n, dtype=bool)
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        opt.zero_grad(set_to_none=True)
        d = loss_of(z)
        if not torch.isfinite(d).all():
            raise FloatingPointError(f"the loss of {name!r} is not finite at step {step} "
                                     f"(values {d.detach().cpu().tolist()})")
        curves.append(d.detach())
        if not d.requires_grad:
            raise NoGradientError(f"{NO_GRADIENT}: the distance of {name!r} does not depend on its input "
                                  "through autograd (it detaches the images or is computed without autograd)")
        d.sum().backward()
        if step == 0:
            if z.grad is None:
                raise NoGradientError(f"{NO_GRADIENT}: backward through the distance of {name!r} leaves the "
                                      "pixels without a gradient")
            if not bool((z.grad != 0).any()):
                raise NoGradientError(f"{NO_GRADIENT}: the gradient of the distance of {name!r} with respect to "
                                      "the pixels is zero everywhere at the start (a piecewise-constant "
                                      "distance: argmax, rounding, thresholds)")
            moved = (z.grad != 0).flatten(1).any(1).cpu().numpy()
        if not torch.isfinite(z.grad).all():
            raise FloatingPointError(f"the gradient of {name!r} is not finite at step {step}")
        opt.step()
    with torch.no_grad():
        final = loss_of(z)
    if not torch.isfinite(final).all():
        raise FloatingPointError(f"the loss of {name!r} is not finite after the last step")
    curves.append(final)
    curve = torch.stack(curves, dim=1).cpu().numpy().astype(np.float64)
    return Inversion(images=torch.sigmoid(z.detach()).float().cpu(), start_loss=curve[:, 0].copy(),
                     end_loss=curve[:, -1].copy(), curves=curve, start_gradient=moved)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] images -> uint8 (rounded), as saved."""
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def evaluate(metric: DistanceMetric, spec: MetricSpec, images: torch.Tensor, targets: torch.Tensor,
             device: torch.device, precision: str) -> np.ndarray:
    """Distances (T,) of uint8 ``images`` to uint8 ``targets`` under ``metric`` (no gradient)."""
    from percepbench.runner import precision_context

    x = to_metric_input(images.to(device).float() / 255.0, spec)
    y = to_metric_input(targets.to(device).float() / 255.0, spec)
    with torch.inference_mode(), precision_context(device, precision):
        d = metric.pairwise(x, y)
    return d.detach().float().cpu().numpy().astype(np.float64)


def save_png(path: Path, pixels: torch.Tensor | np.ndarray) -> None:
    """Write a uint8 image, (3, H, W) tensor or (H, W, 3) array, as PNG (creating its folder)."""
    arr = pixels.permute(1, 2, 0).cpu().numpy() if isinstance(pixels, torch.Tensor) else pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="RGB").save(path, format="PNG")


# -- the run --------------------------------------------------------------------------------------------------
def protocol_text(config: InversionConfig) -> dict[str, Any]:
    """``meta.task_protocols.inversion``: the protocol in words, with this run's settings."""
    return {
        "source": ("bundled photographs (percepbench.tasks.severity.PHOTOS)" if config.images is None
                   else f"image files in {config.images}"),
        "targets": f"centre square crop, resized to {config.size}x{config.size} px (PIL bicubic), 8-bit",
        "parameterisation": "x = sigmoid(z); z starts as standard normal noise from "
                            "numpy.random.default_rng([seed, target index]), the same for every metric",
        "optimiser": f"Adam, lr {config.lr}, {config.steps} steps, no image prior; loss = the metric's distance "
                     "(DistanceMetric.pairwise), one independent optimisation per target",
        "precision": f"{config.precision} (metrics whose spec lacks it compute in fp32)",
        "evaluation": "every inversion saved as 8-bit PNG and measured from that file by every selected metric "
                      "(distance:<evaluator>); loss_start/loss_end: the optimised metric's float loss at the "
                      "start and after the last step",
        "no_gradient": "a metric whose distance gives the pixels no gradient (None or zero everywhere after the "
                       "first backward pass) is reported in meta.failed ('no gradient: ...')",
        "reference": "DreamSim project page, figure 'Optimization' (feature inversion without a prior); its "
                     "exact settings are not published",
    }


def _records(metric: str, table: dict[str, np.ndarray], inv: Inversion, *, n_boot: int, seed: int
             ) -> list[dict[str, Any]]:
    out = []
    columns = [(f"distance:{e}", v) for e, v in table.items()]
    columns += [("loss_start", inv.start_loss), ("loss_end", inv.end_loss)]
    for measure, values in columns:
        lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
        out.append({"task": TASK, "subset": ALL, "metric": metric, "measure": measure,
                    "value": float(np.mean(values)), "ci_low": lo, "ci_high": hi, "n": len(values)})
    return out


def _failure(metric: str, exc: BaseException) -> Failure:
    error = str(exc) if isinstance(exc, NoGradientError) else f"{type(exc).__name__}: {exc}"
    return {"task": TASK, "metric": metric, "kind": "data" if isinstance(exc, DataError) else "failure",
            "error": error}


def _existing_results(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if (out / RESULTS_FILE).exists() and not overwrite:
        raise UsageError(f"{out} already holds a {RESULTS_FILE}: replace it with --overwrite, or choose another "
                         "--out")


def run_inversion(config: InversionConfig) -> RunResults:
    """Invert every target with every selected metric and write the run directory (module docstring).

    Everything that can fail before the optimisation is checked first, with nothing written: options,
    metric names, device and precision, an existing ``results.json`` (without ``overwrite``), the targets
    (:class:`DataError` naming the file) and every metric built. A metric that fails as a loss (no
    gradient, an exception, a non-finite loss) or as an evaluator is recorded in ``meta.failed``; the
    others run on.
    """
    from percepbench.config import RunConfig
    from percepbench.registry import METRICS
    from percepbench.rundir import lock_run_dir, remove_run_files
    from percepbench.runner import (
        build_metric,
        default_out_dir,
        precision_context,
        resolve_device,
        select_metrics,
    )

    check_options(config)
    run_config = RunConfig(metrics=config.metrics, seed=config.seed, precision=config.precision,
                           metric_args=config.metric_args, n_boot=config.n_boot)
    specs = select_metrics(run_config)
    if not specs:
        raise UsageError("no metrics selected (none usable offline? see `percepbench list metrics`)")
    for name in run_config.metric_args:
        METRICS.resolve(name)
    check_sizes(specs, config.size)
    device = resolve_device(config.device)
    precision_context(device, run_config.precision)  # an unsupported precision fails before anything runs
    out = Path(config.out) if config.out else default_out_dir()
    _existing_results(out, config.overwrite)
    targets = load_targets(config)
    torch.manual_seed(config.seed)
    metrics = {s.name: build_metric(s, run_config, device) for s in specs}

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the run directory ({exc.strerror or exc})") from exc
    with lock_run_dir(out):
        _existing_results(out, config.overwrite)  # another run may have written there meanwhile
        if config.overwrite:
            remove_run_files(out)
            shutil.rmtree(out / IMAGE_DIR, ignore_errors=True)
        return _run_locked(config, run_config.precision, out, device, specs, metrics, targets)


def _run_locked(config: InversionConfig, precision: str, out: Path, device: torch.device,
                specs: list[MetricSpec], metrics: dict[str, DistanceMetric], targets: list[Target]) -> RunResults:
    """The inversions and their evaluation, in the locked run directory ``out``."""
    from percepbench.runner import environment, weight_hashes

    ids = [t.id for t in targets]
    target_u8 = torch.from_numpy(np.stack([t.pixels for t in targets])).permute(0, 3, 1, 2).contiguous()
    target_f = (target_u8.float() / 255.0).to(device)
    init_u8 = to_uint8(torch.sigmoid(initial_logits(len(targets), config.size, config.seed)))
    for k, t in enumerate(targets):
        save_png(out / IMAGE_DIR / t.id / "target.png", t.pixels)
        save_png(out / IMAGE_DIR / t.id / "init.png", init_u8[k])

    settings = {"steps": config.steps, "lr": config.lr, "size": config.size, "seed": config.seed,
                "targets": ids, "target_sources": {t.id: t.source for t in targets},
                "optimizer": "adam", "parameterisation": "sigmoid", "image_dir": IMAGE_DIR}
    meta: RunMeta = {
        **environment(device),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "finished": None,
        "precision": precision,  # type: ignore[typeddict-item]
        "seed": config.seed,
        "config": config.to_dict() | {"out": str(out), "precision": precision},
        "metrics": {s.name: s.to_dict() for s in specs},
        "tasks": {TASK: {"name": TASK, "kind": "analysis", **settings}},
        "weights": {s.name: weight_hashes(s) for s in specs if s.weights},
        "task_protocols": {TASK: protocol_text(config)},
        "protocol": [],
        "failed": [],
    }
    records: list[dict[str, Any]] = []
    frames: list[pd.DataFrame] = []
    results = RunResults(meta=meta, records=records_frame([]), samples=None, complete=False, path=out)
    bad_evaluators: set[str] = set()

    def flush(complete: bool = False) -> None:
        results.records = records_frame(records)
        results.samples = pd.concat(frames, ignore_index=True) if frames else None
        results.complete = complete
        write_results(out, results)

    flush()
    for spec in specs:
        name = spec.name
        metric = metrics[name]
        t0 = time.perf_counter()
        try:
            inv = invert(metric, target_f, steps=config.steps, lr=config.lr, seed=config.seed,
                         precision=precision, spec=spec, progress=config.progress, desc=f"inversion · {name}")
        except Exception as exc:  # one metric that cannot be a loss must not stop the others
            meta["failed"].append(_failure(name, exc))
            log.warning("inversion with %s failed: %s", name, meta["failed"][-1]["error"])
            flush()
            continue
        seconds = time.perf_counter() - t0
        stuck = [t.id for t, ok in zip(targets, inv.start_gradient, strict=True) if not ok]
        if stuck:
            log.warning("inversion with %s: no gradient at the start for target(s) %s (samples: start_gradient "
                        "false)", name, ", ".join(stuck))
        images_u8 = to_uint8(inv.images)
        paths = []
        for k, t in enumerate(targets):
            rel = f"{IMAGE_DIR}/{t.id}/{file_safe(name)}.png"
            save_png(out / rel, images_u8[k])
            paths.append(rel)
        table: dict[str, np.ndarray] = {}
        columns: dict[str, np.ndarray] = {}
        for espec in specs:
            try:
                values = evaluate(metrics[espec.name], espec, images_u8, target_u8, device, precision)
                if not np.isfinite(values).all():
                    raise FloatingPointError(f"non-finite distances {values.tolist()}")
            except Exception as exc:
                if espec.name not in bad_evaluators:
                    bad_evaluators.add(espec.name)
                    failure = _failure(espec.name, exc)
                    failure["error"] = f"as an evaluator of inversions: {failure['error']}"
                    meta["failed"].append(failure)
                columns[f"distance:{espec.name}"] = np.full(len(targets), np.nan)
                continue
            table[espec.name] = values
            columns[f"distance:{espec.name}"] = values
        frame = pd.DataFrame({"task": TASK, "subset": ALL, "item": ids, "metric": name, **columns,
                              "start_loss": inv.start_loss, "end_loss": inv.end_loss,
                              "start_gradient": inv.start_gradient,
                              "loss_curve": [c.tolist() for c in inv.curves], "image": paths,
                              "target_image": [f"{IMAGE_DIR}/{i}/target.png" for i in ids],
                              "init_image": [f"{IMAGE_DIR}/{i}/init.png" for i in ids],
                              "seconds": seconds / len(targets), "score": np.nan})
        frames.append(frame)
        records.extend(_records(name, table, inv, n_boot=config.n_boot, seed=config.seed))
        entry: ProtocolEntry = {
            "task": TASK, "metric": name, "inputs": spec.inputs.to_dict(),
            "resize": (f"{config.size}x{config.size} (targets' size)" if spec.inputs.size in (None, config.size)
                       else f"{spec.inputs.size}x{spec.inputs.size} {spec.inputs.interpolation or 'bicubic'} "
                            f"(from {config.size}x{config.size}, differentiable)"),
            "scales_used": getattr(metric, "last_scales", None),
            "precision": metric.computes_in(precision),  # type: ignore[typeddict-item]
            "embedding": None,
            "seconds": round(seconds, 3),
        }
        meta["protocol"].append(entry)
        flush()
    meta["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    flush(complete=True)
    return results


def cross_metric_table(results: RunResults) -> pd.DataFrame:
    """The cross-metric table of a run: rows = optimised-with metric, columns = evaluated-by metric, values =
    mean distance over targets (from the ``distance:<E>`` records)."""
    recs = results.records
    recs = recs[(recs["task"] == TASK) & recs["measure"].astype(str).str.startswith("distance:")].copy()
    if recs.empty:
        return pd.DataFrame()
    recs["evaluator"] = recs["measure"].str.slice(len("distance:"))
    rows = list(dict.fromkeys(recs["metric"]))
    cols = list(dict.fromkeys(recs["evaluator"]))
    table = recs.pivot(index="metric", columns="evaluator", values="value")
    return table.reindex(index=rows, columns=cols)


def cmd_inversion(args: argparse.Namespace) -> int:
    """``percepbench analyze inversion``: run, print the cross-metric table, write the grid figure to
    ``<out>/inversion/grid.png``. Exit 0, or 1 when a metric failed (the others' results are complete);
    :class:`UsageError`/:class:`DataError` propagate (the command line maps them to exit 2)."""
    import sys

    from percepbench.config import parse_name_args, split_list

    config = InversionConfig(
        metrics=split_list(args.metrics) if args.metrics else None, targets=args.targets, images=args.images,
        size=args.size, steps=args.steps, lr=args.lr, seed=args.seed, device=args.device,
        precision=args.precision, out=args.out, overwrite=bool(args.overwrite), n_boot=args.n_boot,
        metric_args=parse_name_args(args.metric_args, "--metric-args") if args.metric_args else {},
        progress=not args.quiet)
    results = run_inversion(config)
    table = cross_metric_table(results)
    if not table.empty:
        print("mean distance to the target (rows: optimised with; columns: evaluated by)")
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    failed = results.meta.get("failed") or []
    for f in failed:
        print(f"FAILED {f['metric']}: {f['error']}", file=sys.stderr)
    print(f"\nresults: {results.path}")
    if results.path is not None and results.samples is not None:
        from percepbench.reports.figures import save_figure
        from percepbench.reports.inversion_figures import inversion_grid

        try:
            grid = inversion_grid(results.path, results.samples, results.meta)
            if grid is not None:
                print(f"figure:  {save_figure(grid.figure, results.path / IMAGE_DIR, 'grid', ('png',))[0]}")
        except Exception as exc:  # the results are written; a figure problem must not hide them
            print(f"percepbench analyze inversion: the grid figure could not be drawn ({type(exc).__name__}: "
                  f"{exc})", file=sys.stderr)
        from percepbench.reports import build_report

        try:
            print(f"report:  {build_report(results.path)['html']}")
        except Exception as exc:
            print(f"percepbench analyze inversion: the report could not be built ({type(exc).__name__}: {exc}); "
                  f"retry with `percepbench report {results.path}`", file=sys.stderr)
    return 1 if failed else 0
