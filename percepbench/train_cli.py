"""The ``percepbench train`` subcommand: flags -> :class:`percepbench.training.TrainConfig` -> :func:`train`.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it joins the process group first (NCCL on CUDA,
gloo on the CPU) and every rank trains its share; rank 0 prints and writes. Errors are the usual ones:
:class:`~percepbench.errors.UsageError` / :class:`~percepbench.errors.DataError` exit 2 through
:func:`percepbench.cli.main`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from percepbench.errors import UsageError


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fine-tune a DreamSim-style metric (LoRA or MLP head) on 2AFC human judgments",
        description="Train LoRA on every qkv projection (or the residual MLP head on frozen features) with "
                    "DreamSim's hinge loss on a 2AFC task (NIGHTS by default: train split, validated on val). "
                    "Defaults are the official recipe. Under torchrun: distributed data parallel.")
    p.add_argument("--out", "-o", required=True, help="output folder: last/, best/, log.jsonl, train_config.json")
    p.add_argument("--task", default="nights", help="2AFC task of the registry (default nights)")
    p.add_argument("--task-args", action="append", metavar="KEY=VALUE,...",
                   help="options of the task, for both splits (e.g. root=/data/nights); NAME:KEY=VALUE also works")
    p.add_argument("--val-task-args", action="append", metavar="KEY=VALUE,...",
                   help="options of the validation task (default: the task's validation split: nights "
                        "subset=val, bapps_2afc split=val; other tasks validate only with this)")
    p.add_argument("--data-root", help="root of downloaded datasets (default: $PERCEPBENCH_DATA)")
    p.add_argument("--variant", help="official DreamSim variant (default ensemble): "
                                     "ensemble, dino_vitb16, clip_vitb32, open_clip_vitb32, dinov2_vitb14, ...")
    p.add_argument("--backbones", help="instead of --variant: backbones joined with '+' (e.g. dino_vits16 or "
                                       "dino_vitb16+clip_vitb16)")
    p.add_argument("--mode", choices=["lora", "mlp"], default="lora", help="what trains (default lora)")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default 16)")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 32 for one backbone, 8 for several)")
    p.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0.2 for one backbone, 0.3 for several)")
    p.add_argument("--hidden", type=int, default=512, help="MLP head hidden size (default 512)")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (default 0)")
    p.add_argument("--epochs", type=int, help="default: 8 (LoRA, one backbone), 6 (LoRA, several), 20 (MLP)")
    p.add_argument("--batch-size", type=int, help="global batch: default 32 (LoRA, one backbone), 16 (several), "
                                                  "512 (MLP)")
    p.add_argument("--margin", type=float, default=0.05, help="hinge margin (default 0.05)")
    p.add_argument("--seed", type=int, default=1234, help="seed (default 1234)")
    p.add_argument("--normalize-embeds", action="store_true",
                   help="centre and L2-normalise embeddings while training (the official scripts do not)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint last/ every STEPS optimizer steps (default: after each epoch)")
    p.add_argument("--stop-after-steps", type=int, metavar="STEPS",
                   help="stop after this many optimizer steps, checkpointed (continue with --resume)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32 (default, the official recipe) or autocast bf16/fp16 (fp16 with a grad scaler, CUDA)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute transformer blocks in the backward pass (less memory, ~30%% more time)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--no-pin-memory", action="store_true", help="do not pin host memory (pinned by default on CUDA)")
    p.add_argument("--val-batch-size", type=int, help="validation batch (default: --batch-size)")
    p.add_argument("--cache", help="weights cache dir (default: $PERCEPBENCH_CACHE or <torch hub>/percepbench)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log to <out>/tensorboard (needs the tensorboard package)")
    p.add_argument("--random-weights", action="store_true",
                   help="random (seeded) backbone weights instead of the pretrained ones: smoke tests only")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or epoch lines")


def parse_task_args(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["root=/d", "nights:min_votes=6"]`` -> ``{"root": "/d", "min_votes": 6}`` (a ``NAME:`` prefix is dropped)."""
    from percepbench.config import parse_scalar

    out: dict[str, Any] = {}
    for item in items or []:
        head, sep, rest = item.partition(":")
        body = rest if sep and "=" not in head else item
        for pair in body.split(","):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"{flag} expects KEY=VALUE[,KEY=VALUE...], got {item!r}")
            out[key.strip()] = parse_scalar(value.strip())
    return out


def _init_distributed() -> bool:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; return whether this process did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def cmd_train(args: argparse.Namespace) -> int:
    from percepbench.training import TrainConfig, train

    val_args = parse_task_args(args.val_task_args, "--val-task-args") if args.val_task_args else None
    config = TrainConfig(
        out=args.out, task=args.task, task_args=parse_task_args(args.task_args, "--task-args"),
        val_task_args=val_args, data_root=args.data_root, variant=args.variant,
        backbones=args.backbones.split("+") if args.backbones else None, mode=args.mode, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, hidden=args.hidden, lr=args.lr,
        weight_decay=args.weight_decay, epochs=args.epochs, batch_size=args.batch_size, margin=args.margin,
        seed=args.seed, normalize_embeds=args.normalize_embeds, resume=args.resume, device=args.device,
        precision=args.precision, grad_checkpointing=args.grad_checkpointing, num_workers=args.num_workers,
        pin_memory=False if args.no_pin_memory else None, val_batch_size=args.val_batch_size,
        save_every=args.save_every, stop_after_steps=args.stop_after_steps, cache_dir=args.cache,
        pretrained=not args.random_weights, tensorboard=args.tensorboard, quiet=args.quiet)
    joined = _init_distributed()
    try:
        result = train(config)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        best = (f"best val 2AFC {result.best_score:.2f} at epoch {result.best_epoch}: {result.best}"
                if result.best_score is not None else f"checkpoint: {result.best}")
        state = "stopped early (continue with --resume)" if result.stopped_early else "done"
        print(f"{state}: {result.epochs_done} epoch(s), {result.steps} step(s); {best}; last: {result.last}")
    return 0
