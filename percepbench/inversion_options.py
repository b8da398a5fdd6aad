"""The options of ``percepbench analyze inversion`` (argparse only, so that building the command line does not
import torch; the work is in :mod:`percepbench.inversion`)."""

from __future__ import annotations

import argparse
from typing import Any

from percepbench.stats import DEFAULT_BOOTSTRAP

#: defaults of the inversion: bundled targets, their side in px, Adam steps and learning rate
DEFAULT_TARGETS = 4
DEFAULT_SIZE = 64
DEFAULT_STEPS = 200
DEFAULT_LR = 0.05


def cmd_inversion(args: argparse.Namespace) -> Any:
    """Run :func:`percepbench.inversion.cmd_inversion` (imported on use)."""
    from percepbench.inversion import cmd_inversion as run_command

    return run_command(args)


def add_inversion_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``inversion`` subcommand to ``sub`` (the ``analyze`` subcommands); its handler is set as the
    ``handler`` default (:func:`cmd_inversion`)."""
    p = sub.add_parser(
        "inversion", help="feature inversion: optimise images from noise to each metric's target",
        description="For each target image and metric, optimise an image from noise (Adam on the pixels, no "
                    "image prior) to minimise the metric's distance to the target, then measure every "
                    "inversion under every metric (a cross-metric table). Writes results.json, "
                    "samples.parquet and the images under <out>/inversion/.",
    )
    p.add_argument("--metrics", "-m",
                   help="comma-separated metric names or globs (default: every metric usable offline)")
    p.add_argument("--targets", type=int,
                   help=f"number of target images (default: {DEFAULT_TARGETS} bundled photographs, or every "
                        "image of --images)")
    p.add_argument("--images", metavar="FOLDER", help="a folder of your own target images (instead of the bundled "
                                                      "photographs)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help=f"side of the square targets and inversions in px (default {DEFAULT_SIZE})")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"Adam steps (default {DEFAULT_STEPS})")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"Adam learning rate (default {DEFAULT_LR})")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise and the bootstrap (default 0)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32 (default), or optimise under torch.autocast in bf16/fp16")
    p.add_argument("--n-boot", type=int, default=DEFAULT_BOOTSTRAP,
                   help=f"bootstrap resamples for the CIs over targets (default {DEFAULT_BOOTSTRAP})")
    p.add_argument("--metric-args", action="append", metavar="NAME:KEY=VALUE,...",
                   help="per-metric options, repeatable (as for `percepbench run`)")
    p.add_argument("--out", "-o", help="run directory (default: runs/<timestamp>)")
    p.add_argument("--overwrite", action="store_true", help="replace the results --out holds")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_inversion)
    return p
