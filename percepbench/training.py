"""``percepbench train``: fine-tune DreamSim-style metrics on 2AFC human judgments (LoRA or an MLP head).

The recipe is the official one (``ssundaram21/dreamsim`` ``training/train.py`` and ``configs/``):

- items: triplets (ref, left, right) with ``p`` = fraction of judges who found the **right** image closer,
  from any 2AFC task of the registry (``nights`` by default: its ``train`` split, validated on ``val``;
  ``bapps_2afc`` with ``split=train``/``val``; ``2afc_csv`` with ``--val-task-args path=...``);
- ``d0 = d(ref, left)``, ``d1 = d(ref, right)``, label ``y = 2 * round(p) - 1`` (``torch.round``: half to even,
  so p = 0.5 counts as "left", as in the official ``HingeLoss``), loss ``max(0, margin - y * (d0 - d1))``
  averaged over the batch (the official code sums, then divides by the batch size), margin 0.05;
- Adam with betas (0.5, 0.999), lr 3e-4, weight decay 0, no schedule, no augmentation, fp32, seed 1234;
- LoRA (peft) on every ``qkv`` projection, the rest frozen: r 16, alpha 32, dropout 0.2, batch 32, 8 epochs
  for one backbone; r 16, alpha 8, dropout 0.3, batch 16, 6 epochs for several (the released ensemble
  adapter says alpha 1.0 in its ``adapter_config.json``; the training config says 8: we follow the config);
- or the residual MLP head ``fc2(relu(fc1(x))) + x`` (hidden 512) on frozen features: batch 512, 20 epochs;
- embeddings compared without ``normalize_embeds`` (the official training scripts build the model with it
  off); ``--normalize-embeds`` turns it on.

Differences from the official loop, on purpose: the reference image is embedded once per step (the official
code embeds it twice, once per distance, with two LoRA dropout masks); validation is scored with
percepbench's 2AFC rule (:func:`percepbench.tasks.base.score_2afc`, soft labels) and the **best** checkpoint
is the one with the highest validation score (the official script keeps every epoch, monitoring val loss);
the MLP head trains on a cache of frozen features computed once (the same values: the frozen backbone has no
dropout), so epochs after the first run no backbone.

Output folder ``<out>``:

- ``train_config.json``: the resolved settings; ``log.jsonl``: one JSON object per line, ``{"event": "step",
  "epoch", "step", "loss", "lr"}`` per optimizer step and ``{"event": "epoch", "epoch", "step", "train_loss",
  "val_score", "val_loss", "best"}`` per epoch (epochs count from 1); with ``tensorboard=True`` the same
  numbers also go to ``<out>/tensorboard`` (``torch.utils.tensorboard``; needs ``pip install tensorboard``);
- ``last/`` and ``best/``: checkpoint folders (:mod:`percepbench.dreamsim_checkpoint`: the official adapter
  folder or the MLP head, plus ``percepbench_checkpoint.json``) with ``training_state.pt``: trainable
  tensors, optimizer and grad-scaler states, epoch and step, the RNG states (python, numpy, torch CPU and
  CUDA) and the current epoch's data order. A checkpoint folder is written whole under a temporary name and
  then swapped in, so a kill at any moment leaves the previous or the new checkpoint, never a mix.
  ``--resume`` continues from ``last/`` (after each epoch, or every ``--save-every`` steps) and ends with the
  same weights as an uninterrupted run.

Data order: epoch ``e`` visits the items in ``numpy.random.default_rng([seed, e]).permutation(n)``, cut into
batches of ``batch_size`` (the last one may be smaller). Distributed (``torchrun``): every rank takes every
``world_size``-th item of each global batch, the loss is scaled so that DDP's gradient average equals the
gradient of the global batch mean, validation items are sharded without padding and gathered on every
rank, and only rank 0 writes logs and checkpoints. This is ``DistributedSampler``'s job done by hand, on
purpose: ``DistributedSampler`` shuffles per rank (so N processes would not see the batches one process sees,
and resume would need its internal state) and pads the last shard with repeated items (which would count
validation items twice).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from percepbench.dreamsim_checkpoint import HIDDEN, MLPHead, save_head, write_meta
from percepbench.errors import DataError, UsageError
from percepbench.fileio import atomic_write, atomic_write_text

MODES = ("lora", "mlp")
PRECISIONS = ("fp32", "bf16", "fp16")
#: official LoRA settings (r, alpha, dropout): one backbone, several backbones (configs/train_*_lora.yaml)
LORA_SINGLE = (16, 32.0, 0.2)
LORA_ENSEMBLE = (16, 8.0, 0.3)
#: official (batch size, epochs): LoRA one backbone / several, MLP head
RECIPE = {("lora", False): (32, 8), ("lora", True): (16, 6), ("mlp", False): (512, 20), ("mlp", True): (512, 20)}
#: task options selecting the train and validation splits of the registry's 2AFC tasks that have them
TASK_SPLITS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "nights": ({"subset": "train"}, {"subset": "val"}),
    "bapps_2afc": ({"split": "train"}, {"split": "val"}),
}
STATE_FILE = "training_state.pt"
STATE_FORMAT = 1
#: settings that must be the same when resuming (``epochs`` may grow; device, workers, output may change)
RESUME_KEYS = ("task", "task_args", "val_task_args", "backbones", "features", "mode", "lora_r", "lora_alpha",
               "lora_dropout", "hidden", "lr", "weight_decay", "batch_size", "margin", "seed",
               "normalize_embeds", "precision", "pretrained", "world_size")


@dataclass
class TrainConfig:
    """Settings of one training run; ``None`` fields take the official recipe's value (module docstring)."""

    out: str
    task: str = "nights"
    task_args: dict[str, Any] = field(default_factory=dict)
    #: options of the validation task (default: the task's validation split, see TASK_SPLITS; else none)
    val_task_args: dict[str, Any] | None = None
    data_root: str | None = None
    variant: str | None = None  # an official DreamSim variant (default ensemble) ...
    backbones: list[str] | None = None  # ... or backbones of percepbench.models.configs.BACKBONES
    mode: str = "lora"
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    hidden: int = HIDDEN
    lr: float = 3e-4
    weight_decay: float = 0.0
    epochs: int | None = None
    batch_size: int | None = None
    margin: float = 0.05
    seed: int = 1234
    normalize_embeds: bool = False
    resume: bool = False
    device: str | None = None
    precision: str = "fp32"
    grad_checkpointing: bool = False
    num_workers: int = 0
    pin_memory: bool | None = None  # default: on with CUDA
    val_batch_size: int | None = None  # default: batch_size (LoRA) or 1024 (MLP, cached features)
    save_every: int = 0  # also checkpoint ``last`` every N optimizer steps (0: after each epoch only)
    stop_after_steps: int | None = None  # stop (checkpointed, resumable) after this many optimizer steps
    cache_dir: str | None = None
    pretrained: bool = True  # False: random backbone weights (seeded), for tests
    tensorboard: bool = False  # also log to <out>/tensorboard (needs the tensorboard package)
    quiet: bool = False


@dataclass
class TrainResult:
    """What :func:`train` returns (rank 0 has the full picture; every rank gets the same numbers)."""

    out: Path
    last: Path
    best: Path | None
    best_score: float | None
    best_epoch: int | None
    epochs_done: int
    steps: int
    losses: list[float]  # per optimizer step, this call only
    val_scores: list[float | None]  # per finished epoch, all calls
    stopped_early: bool = False


# ---------------------------------------------------------------------------------------------- the loss
def hinge_loss(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor, margin: float = 0.05,
               reduction: str = "mean") -> torch.Tensor:
    """DreamSim's hinge loss: ``max(0, margin - y * (d0 - d1))`` with ``y = 2 * round(p) - 1``.

    ``d0 = d(ref, left)``, ``d1 = d(ref, right)``, ``p`` = fraction judging the right image closer (soft
    labels are rounded; ``round(0.5) = 0``, as ``torch.round`` in the official code). ``reduction``:
    ``"mean"`` (the official loss), ``"sum"`` or ``"none"``.

    >>> float(hinge_loss(torch.tensor([0.3]), torch.tensor([0.1]), torch.tensor([1.0])))  # right closer: ok
    0.0
    """
    y = 2.0 * torch.round(p.to(d0.dtype)) - 1.0
    terms = torch.clamp_min(margin - y * (d0 - d1), 0.0)
    if reduction == "none":
        return terms
    return terms.sum() if reduction == "sum" else terms.mean()


# ---------------------------------------------------------------------------------------------- the model
def resolve_variant(variant: str | None, backbones: list[str] | str | None) -> Any:
    """An official :class:`~percepbench.models.configs.Variant` (by name, or when ``backbones`` are exactly
    one), else a custom one over ``backbones`` with each backbone's default feature."""
    from percepbench.models.configs import BACKBONES, VARIANTS, Variant, zero_shot_variant

    if variant and backbones:
        raise UsageError("give --variant or --backbones, not both")
    if not backbones:
        name = variant or "ensemble"
        if name not in VARIANTS:
            raise UsageError(f"unknown DreamSim variant {name!r}; choose one of {', '.join(VARIANTS)} "
                             "(or --backbones a+b from the backbones of `percepbench list`)")
        return VARIANTS[name]
    names = [b for b in (backbones.split("+") if isinstance(backbones, str) else backbones) if b]
    unknown = [b for b in names if b not in BACKBONES]
    if unknown or not names:
        raise UsageError(f"unknown backbone(s) {unknown or names}; choose from {', '.join(BACKBONES)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--backbones lists a backbone twice: {'+'.join(names)}")
    features = tuple(zero_shot_variant(b).feature[0] for b in names)
    for v in VARIANTS.values():
        if v.backbones == tuple(names) and v.feature == features:
            return v
    return Variant("+".join(names), tuple(names), features, lora_dir="", zip_url="")


class Scorer(nn.Module):
    """Distances of triplets under training: the DreamSim model plus, in MLP mode, the head.

    ``forward(ref, left, right) -> (d0, d1)`` embeds the three batches in one pass. In MLP mode the head is
    applied to the raw pooled features, then ``normalize_embeds`` (as the official ``PerceptualModel``).
    """

    def __init__(self, model: nn.Module, head: MLPHead | None, normalize_embeds: bool) -> None:
        super().__init__()
        self.model, self.head, self.normalize = model, head, normalize_embeds
        if head is not None:
            model.normalize_embeds = False  # the head comes first, normalisation after it

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen pooled features (MLP mode: what the feature cache stores)."""
        return self.model.embed_pooled(x)

    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        from percepbench.models.dreamsim import normalize_embedding

        e = self.head(f) if self.head is not None else f
        return normalize_embedding(e) if self.normalize and self.head is not None else e

    def distances(self, er: torch.Tensor, el: torch.Tensor, eR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.head is None:
            dist = self.model.distance_from_embeddings
            return dist(er, el), dist(er, eR)
        return 1.0 - F.cosine_similarity(er, el, dim=-1), 1.0 - F.cosine_similarity(er, eR, dim=-1)

    def forward(self, ref: torch.Tensor, left: torch.Tensor, right: torch.Tensor, cached: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, 224, 224) in [0, 1]; with ``cached``, frozen features (MLP mode) instead."""
        if cached:
            return self.forward_features(ref, left, right)
        n = ref.shape[0]
        x = torch.cat([ref, left, right])
        e = self.model.embed(x) if self.head is None else self.from_features(self.features(x))
        return self.distances(*e.split(n))

    def forward_features(self, fr: torch.Tensor, fl: torch.Tensor, fR: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """MLP mode on cached features."""
        return self.distances(self.from_features(fr), self.from_features(fl), self.from_features(fR))


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Recompute every transformer block in the backward pass (``torch.utils.checkpoint``, non-reentrant,
    RNG preserved) instead of keeping its activations; module names and keys stay the same. Returns the
    number of blocks wrapped."""
    from torch.utils.checkpoint import checkpoint

    n = 0
    for backbone in model.extractor_list:
        for block in backbone.model.blocks:
            plain = block.forward

            def wrapped(x: torch.Tensor, _plain: Any = plain) -> torch.Tensor:
                return checkpoint(_plain, x, use_reentrant=False) if torch.is_grad_enabled() else _plain(x)

            block.forward = wrapped
            n += 1
    return n


# ---------------------------------------------------------------------------------------------- data
class _Indexed:
    """Element ``i`` of a task dataset with its index (picklable, for DataLoader workers)."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        d = self.base[i]
        return {"ref": d["ref"], "left": d["left"], "right": d["right"], "index": i}


def _split_options(task: str, task_args: dict[str, Any], val_task_args: dict[str, Any] | None
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    train_split, val_split = TASK_SPLITS.get(task, ({}, None))
    train_args = {**train_split, **task_args}
    if val_task_args is not None:
        return train_args, {**task_args, **val_task_args}
    return train_args, None if val_split is None else {**task_args, **val_split}


def prepare_task(name: str, args: dict[str, Any], *, data_root: str | None, quiet: bool, seed: int,
                 role: str) -> Any:
    """Build and prepare a registered 2AFC task (its items give ref/left/right files and ``p``)."""
    from percepbench.config import check_options, normalise_options
    from percepbench.registry import TASKS

    spec = TASKS.get(name)
    if spec.kind != "2afc":
        raise UsageError(f"task {spec.name!r} is a {spec.kind} task; training needs 2AFC triplets "
                         "(nights, bapps_2afc, 2afc_csv, ...)")
    args = normalise_options("task", {spec.name: dict(args)}).get(spec.name, {})
    check_options("task", spec.name, spec.load(), args)
    try:
        task = spec.create(**args)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"task {spec.name!r} ({role}): bad options {args}: {exc}") from exc
    task.prepare(data_root=data_root, progress=not quiet, seed=seed)
    items = task.items
    if len(items) == 0 or "p" not in items.columns:
        raise DataError(f"task {spec.name!r} ({role} split, options {args}): no 2AFC items to train on")
    if task.image_paths() is None:
        raise UsageError(f"task {spec.name!r} generates its images in memory; training reads image files")
    return task


# ---------------------------------------------------------------------------------------------- helpers
def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _resolve_device(device: str | None) -> torch.device:
    rank_local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", rank_local if _dist()[1] > 1 else torch.cuda.current_device())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {device!r} is not a torch device: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here")
    if dev.type == "cuda" and dev.index is None and _dist()[1] > 1:
        dev = torch.device("cuda", rank_local)
    return dev


def _rng_state() -> dict[str, Any]:
    """Every RNG's state in types ``torch.load(weights_only=True)`` reads back (numpy's keys as a tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace folder ``final`` by ``tmp``: ``final`` -> ``.<name>.prev``, ``tmp`` -> ``final``, drop prev."""
    prev = final.parent / f".{final.name}.prev"
    shutil.rmtree(prev, ignore_errors=True)
    if final.exists():
        os.replace(final, prev)
    os.replace(tmp, final)
    shutil.rmtree(prev, ignore_errors=True)


def _recover(final: Path) -> None:
    """After a kill between the two renames of :func:`_swap_in`, the previous checkpoint is in ``.prev``."""
    prev = final.parent / f".{final.name}.prev"
    if not final.exists() and prev.is_dir():
        os.replace(prev, final)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The item order of 0-based ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One training run (see the module docstring); use :func:`train`."""

    def __init__(self, config: TrainConfig) -> None:
        self.cfg = config
        self.rank, self.world = _dist()
        self.out = Path(config.out)
        if config.mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {config.mode!r}")
        if config.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
        self.variant = resolve_variant(config.variant, config.backbones)
        if config.mode == "mlp" and self.variant.is_patch:
            raise UsageError(f"--mode mlp on the patch variant {self.variant.name} is not supported (the "
                             "official MLP head acts on one vector per image)")
        several = len(self.variant.backbones) > 1
        lora_defaults = LORA_ENSEMBLE if several else LORA_SINGLE
        batch, epochs = RECIPE[(config.mode, several)]
        self.batch_size = int(config.batch_size or batch)
        self.epochs = int(config.epochs if config.epochs is not None else epochs)
        self.lora = {"r": int(config.lora_r if config.lora_r is not None else lora_defaults[0]),
                     "lora_alpha": float(config.lora_alpha if config.lora_alpha is not None else lora_defaults[1]),
                     "lora_dropout": float(config.lora_dropout if config.lora_dropout is not None
                                           else lora_defaults[2]),
                     "bias": "none", "target_modules": ["qkv"]}
        for what, value, ok in (("--batch-size", self.batch_size, self.batch_size >= 1),
                                ("--epochs", self.epochs, self.epochs >= 1),
                                ("--lr", config.lr, config.lr > 0),
                                ("--weight-decay", config.weight_decay, config.weight_decay >= 0),
                                ("--margin", config.margin, config.margin >= 0),
                                ("--lora-r", self.lora["r"], self.lora["r"] >= 1),
                                ("--lora-dropout", self.lora["lora_dropout"], 0 <= self.lora["lora_dropout"] < 1),
                                ("--hidden", config.hidden, config.hidden >= 1),
                                ("--save-every", config.save_every, config.save_every >= 0)):
            if not ok:
                raise UsageError(f"{what} {value} is out of range")
        if self.batch_size < self.world:
            raise UsageError(f"--batch-size {self.batch_size} is smaller than the {self.world} processes")
        self.device = _resolve_device(config.device)
        self.tb: Any = None
        if config.tensorboard:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise UsageError("--tensorboard needs the tensorboard package (pip install tensorboard); "
                                 "log.jsonl holds the same numbers")
        if config.precision == "fp16" and self.device.type != "cuda":
            raise UsageError("--precision fp16 needs a CUDA device (use bf16 on the CPU)")
        self.resolved = self._resolved()

    def _resolved(self) -> dict[str, Any]:
        c = self.cfg
        train_args, val_args = _split_options(c.task, c.task_args, c.val_task_args)
        return {"out": str(self.out), "task": c.task, "task_args": train_args, "val_task_args": val_args,
                "data_root": c.data_root, "variant": self.variant.name, "backbones": list(self.variant.backbones),
                "features": list(self.variant.feature), "mode": c.mode,
                "lora_r": self.lora["r"] if c.mode == "lora" else None,
                "lora_alpha": self.lora["lora_alpha"] if c.mode == "lora" else None,
                "lora_dropout": self.lora["lora_dropout"] if c.mode == "lora" else None,
                "hidden": c.hidden if c.mode == "mlp" else None, "lr": c.lr, "weight_decay": c.weight_decay,
                "epochs": self.epochs, "batch_size": self.batch_size, "margin": c.margin, "seed": c.seed,
                "normalize_embeds": c.normalize_embeds, "precision": c.precision,
                "grad_checkpointing": c.grad_checkpointing, "pretrained": c.pretrained,
                "world_size": self.world, "device": str(self.device), "optimizer": "Adam(betas=(0.5, 0.999))",
                "loss": "mean(max(0, margin - (2 * round(p) - 1) * (d0 - d1)))"}

    # -- setup -----------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any] | None:
        last = self.out / "last"
        if self.rank == 0:
            _recover(last)
            _recover(self.out / "best")
        self._barrier()
        if not self.cfg.resume:
            if last.exists():
                raise UsageError(f"{self.out} already holds a training run ({last}); continue it with --resume, "
                                 "or choose another --out")
            return None
        path = last / STATE_FILE
        if not path.is_file():
            raise UsageError(f"--resume: {path} not found: nothing to resume in {self.out}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain Python values only
        except Exception as exc:
            raise UsageError(f"--resume: {path} is unreadable ({exc})") from exc
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UsageError(f"--resume: {path} is not a percepbench training state")
        old = state["config"]
        diffs = [f"{k}: {old.get(k)!r} in the checkpoint, {self.resolved.get(k)!r} now" for k in RESUME_KEYS
                 if old.get(k) != self.resolved.get(k)]
        if diffs:
            raise UsageError(f"--resume: incompatible checkpoint {last}: " + "; ".join(diffs))
        return state

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _build(self) -> None:
        from percepbench.models.dreamsim import build_dreamsim

        c = self.cfg
        _seed_all(c.seed)
        model = build_dreamsim(self.variant.name if self.variant.lora_dir else self.variant,
                               cache_dir=c.cache_dir, pretrained=c.pretrained, lora=False,
                               normalize_embeds=c.normalize_embeds, progress=not c.quiet and self.rank == 0)
        head = None
        if c.mode == "lora":
            try:
                model.add_lora(dict(self.lora))
            except ValueError as exc:
                raise UsageError(f"LoRA on {self.variant.name}: {exc}") from exc
            params = model.lora_parameters()
            if not params:
                raise UsageError(f"{self.variant.name} has no 'qkv' projection to put LoRA on")
            for p in params:
                p.requires_grad_(True)
        else:
            head = MLPHead(self.variant.embed_dim, c.hidden)
        if c.grad_checkpointing:
            enable_grad_checkpointing(model)
        self.model = model
        self.scorer = Scorer(model, head, c.normalize_embeds).to(self.device)
        self.params = [p for p in self.scorer.parameters() if p.requires_grad]
        self.named_trainable = {k: v for k, v in self.scorer.named_parameters() if v.requires_grad}
        self.net: nn.Module = self.scorer
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.scorer, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.params, lr=c.lr, betas=(0.5, 0.999), weight_decay=c.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.precision == "fp16")

    def _autocast(self) -> Any:
        if self.cfg.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _loader(self, dataset: Any, batches: list[list[int]]) -> Any:
        from torch.utils.data import DataLoader

        c = self.cfg
        pin = c.pin_memory if c.pin_memory is not None else self.device.type == "cuda"
        # its own generator: creating an iterator never draws from the global RNG (resume stays exact)
        return DataLoader(_Indexed(dataset), batch_sampler=batches, num_workers=c.num_workers, pin_memory=pin,
                          generator=torch.Generator().manual_seed(c.seed), persistent_workers=False)

    def _images(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        return [batch[s].to(self.device, non_blocking=True).float().div_(255.0) for s in ("ref", "left", "right")]

    # -- MLP feature cache -------------------------------------------------------------------------
    def _build_feature_cache(self, tasks: list[Any]) -> None:
        """Embed every unique image of the train and val tasks once with the frozen backbone."""
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        paths = list(dict.fromkeys(p for t in tasks if t is not None for row in t.image_paths() for p in row))
        self.feature_row = {p: i for i, p in enumerate(paths)}
        mine = list(range(self.rank, len(paths), self.world))
        ds = tasks[0].image_dataset([paths[i] for i in mine], self.variant.inputs)
        pin = self.cfg.pin_memory if self.cfg.pin_memory is not None else self.device.type == "cuda"
        loader = DataLoader(ds, batch_size=max(self.batch_size, 64), num_workers=self.cfg.num_workers,
                            pin_memory=pin, generator=torch.Generator().manual_seed(self.cfg.seed))
        chunks = []
        self.scorer.eval()
        with torch.no_grad(), self._autocast():
            for x in tqdm(loader, desc="features (once)", unit="batch", disable=self.cfg.quiet or self.rank != 0,
                          leave=False):
                chunks.append(self.scorer.features(x.to(self.device).float().div_(255.0)).float().cpu())
        local = torch.cat(chunks) if chunks else torch.zeros(0, self.variant.embed_dim)
        if self.world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, (mine, local))
            full = torch.zeros(len(paths), self.variant.embed_dim)
            for idx, feats in gathered:
                full[idx] = feats
            local = full
        self.features = local.to(self.device)

    def _cached(self, task: Any, indices: list[int]) -> list[torch.Tensor]:
        rows = task.image_paths()
        out = []
        for slot in range(3):
            r = torch.tensor([self.feature_row[rows[i][slot]] for i in indices], device=self.device)
            out.append(self.features[r])
        return out

    # -- validation --------------------------------------------------------------------------------
    def validate(self) -> tuple[float, float] | None:
        """(2AFC score x 100, mean hinge loss) on the validation items, gathered from every rank."""
        from percepbench.tasks.base import score_2afc

        task = self.val_task
        if task is None:
            return None
        n = len(task.items)
        mine = list(range(self.rank, n, self.world))  # shards without padding: every item exactly once
        vb = self.cfg.val_batch_size or (self.batch_size if self.cfg.mode == "lora" else 1024)
        batches = [mine[i:i + vb] for i in range(0, len(mine), vb)]
        self.scorer.eval()
        idx, d0s, d1s = [], [], []
        with torch.no_grad(), self._autocast():
            if self.cfg.mode == "mlp":
                for b in batches:
                    d0, d1 = self.scorer.forward_features(*self._cached(task, b))
                    idx += b
                    d0s.append(d0.float().cpu())
                    d1s.append(d1.float().cpu())
            else:
                for batch in self._loader(self.val_dataset, batches):
                    d0, d1 = self.scorer(*self._images(batch))
                    idx += batch["index"].tolist()
                    d0s.append(d0.float().cpu())
                    d1s.append(d1.float().cpu())
        self.scorer.train()
        d0 = torch.cat(d0s).numpy() if d0s else np.zeros(0)
        d1 = torch.cat(d1s).numpy() if d1s else np.zeros(0)
        if self.world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, (idx, d0, d1))
            idx = [i for g in gathered for i in g[0]]
            d0 = np.concatenate([g[1] for g in gathered])
            d1 = np.concatenate([g[2] for g in gathered])
        order = np.argsort(np.asarray(idx), kind="stable")
        if len(order) != n or len(set(idx)) != n:
            raise RuntimeError(f"validation gathered {len(idx)} distances for {n} items")
        d0, d1 = d0[order], d1[order]
        p = task.items["p"].to_numpy(dtype=np.float64)
        try:
            score = float(score_2afc(d0, d1, p).mean() * 100.0)
        except ValueError as exc:
            raise RuntimeError(f"validation: {exc} (diverged training? try a smaller --lr or fp32)") from exc
        loss = float(hinge_loss(torch.tensor(d0), torch.tensor(d1), torch.tensor(p, dtype=torch.float32),
                                self.cfg.margin))
        return score, loss

    # -- checkpoints -----------------------------------------------------------------------------
    def _meta(self, epoch: int, val_score: float | None) -> dict[str, Any]:
        return {"mode": self.cfg.mode, "variant": self.variant.name if self.variant.lora_dir else None,
                "backbones": list(self.variant.backbones), "features": list(self.variant.feature),
                "embed_dim": self.variant.embed_dim, "normalize_embeds": self.cfg.normalize_embeds,
                "epoch": epoch, "step": self.step, "val_score": val_score}

    def save(self, *, next_epoch: int, next_batch: int, order: np.ndarray | None, val_score: float | None,
             best: bool) -> None:
        """Write ``last/`` (and copy it to ``best/``), rank 0 only; every rank waits for it."""
        if self.rank == 0:
            tmp = self.out / ".last.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if self.cfg.mode == "lora":
                self.model.save_lora(tmp)
            else:
                save_head(self.scorer.head, tmp)
            write_meta(tmp, self._meta(next_epoch if next_batch == 0 else next_epoch + 1, val_score))
            state = {"format": STATE_FORMAT, "config": self.resolved, "next_epoch": next_epoch,
                     "next_batch": next_batch, "step": self.step,
                     "order": None if order is None else order.tolist(),
                     "trainable": {k: v.detach().cpu().clone() for k, v in self.named_trainable.items()},
                     "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                     "rng": _rng_state(),
                     "best_score": None if self.best_score is None else float(self.best_score),
                     "best_epoch": None if self.best_epoch is None else int(self.best_epoch),
                     "val_scores": [None if v is None else float(v) for v in self.val_scores], "time": time.time()}
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write(tmp / STATE_FILE, lambda fh: fh.write(buf.getvalue()))
            if best:  # best before last: a kill in between repeats this epoch, which rewrites best the same
                btmp = self.out / ".best.tmp"
                shutil.rmtree(btmp, ignore_errors=True)
                shutil.copytree(tmp, btmp)
                _swap_in(btmp, self.out / "best")
            _swap_in(tmp, self.out / "last")
        self._barrier()

    def _restore(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["trainable"].items():
                if k not in self.named_trainable or self.named_trainable[k].shape != v.shape:
                    raise UsageError(f"--resume: incompatible checkpoint: trainable tensor {k} does not match")
                self.named_trainable[k].copy_(v.to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.val_scores = list(state["val_scores"])

    # -- log ---------------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key in ("loss", "lr", "train_loss", "val_score", "val_loss"):
                if isinstance(record.get(key), (int, float)):
                    self.tb.add_scalar(f"{record['event']}/{key}", record[key], record["step"])
            self.tb.flush()

    def _open_tensorboard(self) -> Any:
        if not self.cfg.tensorboard or self.rank != 0:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out / "tensorboard"))

    def _trim_log(self) -> None:
        """On resume: drop log lines written after the checkpoint (their steps run again)."""
        path = self.out / "log.jsonl"
        if self.rank != 0 or not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if rec.get("step", 0) <= self.step and (rec.get("event") != "epoch"
                                                    or rec.get("epoch", 0) <= len(self.val_scores)):
                keep.append(line)
        atomic_write_text(path, "".join(k + "\n" for k in keep))

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        c = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self._barrier()
        state = self._load_state()
        self.tb = self._open_tensorboard()
        train_args, val_args = _split_options(c.task, c.task_args, c.val_task_args)
        self.train_task = prepare_task(c.task, train_args, data_root=c.data_root, quiet=c.quiet or self.rank != 0,
                                       seed=c.seed, role="train")
        self.val_task = None if val_args is None else prepare_task(
            c.task, val_args, data_root=c.data_root, quiet=c.quiet or self.rank != 0, seed=c.seed, role="validation")
        self._build()
        inputs = self.variant.inputs
        self.train_dataset = self.train_task.dataset(inputs)
        self.val_dataset = None if self.val_task is None else self.val_task.dataset(inputs)
        if c.mode == "mlp":
            self._build_feature_cache([self.train_task, self.val_task])
        self.step, self.best_score, self.best_epoch, self.val_scores = 0, None, None, []
        start_epoch, start_batch = 0, 0
        if state is not None:
            self._restore(state)
            start_epoch, start_batch = int(state["next_epoch"]), int(state["next_batch"])
            if start_batch and state["order"] != epoch_order(c.seed, start_epoch, len(self.train_task.items)).tolist():
                raise UsageError("--resume: the training items changed since the checkpoint (data order differs)")
            self._trim_log()
        elif self.rank == 0:
            atomic_write_text(self.out / "train_config.json", json.dumps(self.resolved, indent=2) + "\n")
            (self.out / "log.jsonl").unlink(missing_ok=True)
        p_all = torch.tensor(self.train_task.items["p"].to_numpy(dtype=np.float64), dtype=torch.float32)
        n = len(p_all)
        losses: list[float] = []
        stopped = False
        self.scorer.train()
        for epoch in range(start_epoch, self.epochs):
            order = epoch_order(c.seed, epoch, n)
            batches = [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
            first = start_batch if epoch == start_epoch else 0
            mine = [b[self.rank::self.world] for b in batches[first:]]
            sizes = [len(b) for b in batches[first:]]
            epoch_losses: list[float] = []
            bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step",
                       disable=c.quiet or self.rank != 0, leave=False)
            source = (iter(mine) if c.mode == "mlp" else iter(self._loader(self.train_dataset, mine)))
            for k, (batch, global_size) in enumerate(zip(source, sizes, strict=True)):
                index = batch if c.mode == "mlp" else batch["index"].tolist()
                p = p_all[index].to(self.device)
                with self._autocast():
                    if c.mode == "mlp":
                        d0, d1 = self.net(*self._cached(self.train_task, index), cached=True)
                    else:
                        d0, d1 = self.net(*self._images(batch))
                local_sum = hinge_loss(d0.float(), d1.float(), p, c.margin, reduction="sum")
                loss = local_sum * (self.world / global_size)  # DDP averages over ranks: mean of the global batch
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.step += 1
                value = local_sum.detach()
                if self.world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(value)
                value = float(value) / global_size
                losses.append(value)
                epoch_losses.append(value)
                self._log({"event": "step", "epoch": epoch + 1, "step": self.step, "loss": value, "lr": c.lr})
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
                done_batch = first + k + 1
                at_end = done_batch == len(batches)
                stop = c.stop_after_steps is not None and self.step >= c.stop_after_steps
                if not at_end and (stop or (c.save_every and self.step % c.save_every == 0)):
                    self.save(next_epoch=epoch, next_batch=done_batch, order=order, val_score=None, best=False)
                if stop and not at_end:
                    stopped = True
                    break
            bar.close()
            if stopped:
                break
            val = self.validate()
            score = None if val is None else val[0]
            self.val_scores.append(score)
            improved = val is None or self.best_score is None or score > self.best_score
            if improved:
                self.best_score, self.best_epoch = score, epoch + 1
            self.save(next_epoch=epoch + 1, next_batch=0, order=None, val_score=score, best=improved)
            self._log({"event": "epoch", "epoch": epoch + 1, "step": self.step,
                       "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                       "val_score": score, "val_loss": None if val is None else val[1], "best": improved})
            if self.rank == 0 and not c.quiet:
                shown = "" if val is None else f", val 2AFC {score:.2f} (loss {val[1]:.4f})"
                print(f"epoch {epoch + 1}/{self.epochs}: train loss "
                      f"{np.mean(epoch_losses) if epoch_losses else float('nan'):.4f}{shown}"
                      + (" (best)" if improved else ""), flush=True)
            if c.stop_after_steps is not None and self.step >= c.stop_after_steps and epoch + 1 < self.epochs:
                stopped = True
                break
        if self.tb is not None:
            self.tb.close()
        best = self.out / "best"
        return TrainResult(out=self.out, last=self.out / "last", best=best if best.exists() else None,
                           best_score=self.best_score, best_epoch=self.best_epoch,
                           epochs_done=len(self.val_scores), steps=self.step, losses=losses,
                           val_scores=list(self.val_scores), stopped_early=stopped)


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says (see the module docstring); under ``torchrun`` (an initialised
    ``torch.distributed`` process group) as one rank of a DDP job.

    Raises:
        UsageError: bad settings, an existing run in ``out`` without ``resume``, an incompatible checkpoint.
        DataError: missing or malformed data, an empty split.
        WeightsError: backbone weights missing or failing verification.
    """
    return Trainer(config).run()

