"""Tiny metrics used by tests through the registry (importable as ``helpers_metrics``)."""

from __future__ import annotations

import os
import time
from typing import ClassVar

import torch

from percepbench.metrics_registry.base import DistanceMetric


class MeanAbs(DistanceMetric):
    """Mean absolute pixel difference: a deterministic toy metric."""

    def distance(self, preds, target):
        return (preds - target).abs().flatten(1).mean(1)


class Flipped(DistanceMetric):
    """1 - mean absolute difference: ranks pairs the wrong way round (a deterministic bad metric)."""

    def distance(self, preds, target):
        return 1 - (preds - target).abs().flatten(1).mean(1)


class Broken(DistanceMetric):
    def distance(self, preds, target):
        raise RuntimeError("this metric is broken on purpose")


class Interrupt(DistanceMetric):
    def distance(self, preds, target):
        raise KeyboardInterrupt


class WithNet(DistanceMetric):
    """A metric with a frozen feature network, to test the freezing contract."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = self.freeze(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.5)))

    def distance(self, preds, target):
        return (self.net(preds) - self.net(target)).pow(2).flatten(1).mean(1)


class ToyEmbed(DistanceMetric):
    """An embedding metric (per-channel mean and spread): counts how many images it embedded."""

    embeds = True
    embedded = 0  # class-wide count of images embedded, for tests

    def embed(self, x):
        type(self).embedded += x.shape[0]
        flat = x.flatten(2)
        return torch.cat([flat.mean(2) + 0.1, flat.std(2) + 0.05, flat.amax(2)], dim=1)

    def distance(self, preds, target):
        return self.embedding_distance(self.embed(preds), self.embed(target))


class ToyEmbedPairwise(ToyEmbed):
    """The same distance without the embedding path (the runner batches pairs instead)."""

    embeds = False


class LinearEmbed(DistanceMetric):
    """An embedding metric with a frozen linear layer (which autocast runs in bf16/fp16); records the
    dtypes that layer produced, for precision tests. Inputs must be 16x16 (the test specs say so)."""

    embeds = True
    seen_dtypes: ClassVar[set] = set()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.net = self.freeze(torch.nn.Linear(3 * 16 * 16, 8))

    def embed(self, x):
        out = self.net(x.flatten(1))
        type(self).seen_dtypes.add(out.dtype)
        return out

    def distance(self, preds, target):
        return self.embedding_distance(self.embed(preds), self.embed(target))


class LinearEmbedPairwise(LinearEmbed):
    """The same distance on the runner's pairwise path."""

    embeds = False


class NaNAbove(DistanceMetric):
    """Mean absolute difference, replaced by ``value`` (NaN by default) where it exceeds ``threshold``: a
    metric that breaks on some items, as piq's indices do under bf16/fp16."""

    def __init__(self, threshold: float = 0.3, value: float = float("nan"), **kwargs):
        super().__init__(**kwargs)
        self.threshold, self.value = float(threshold), float(value)

    def distance(self, preds, target):
        d = (preds - target).abs().flatten(1).mean(1)
        return torch.where(d > self.threshold, torch.full_like(d, self.value), d)


class NaNEmbed(ToyEmbed):
    """An embedding metric whose embeddings are all NaN."""

    def embed(self, x):
        return torch.full((x.shape[0], 4), float("nan"), device=x.device)


class GreyLevel(DistanceMetric):
    """An embedding metric on flat images: the embedding is the mean pixel value (x 255), the distance the
    absolute difference (an L2 space), so rankings of flat grey images can be worked out by hand. Counts
    the images it embedded."""

    embeds = True
    embedding_space = "l2"
    embedded = 0

    def embed(self, x):
        type(self).embedded += x.shape[0]
        return x.flatten(1).mean(1, keepdim=True) * 255

    def embedding_distance(self, a, b):
        return (a - b).norm(dim=-1)

    def distance(self, preds, target):
        return self.embedding_distance(self.embed(preds), self.embed(target))


class NeedsWeights(MeanAbs):
    """MeanAbs that needs a weight file to build (fetched from an address that does not resolve): a metric
    whose weights are missing, for the partial-run tests."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from percepbench.specs import WeightFile
        from percepbench.weights import ensure_files

        ensure_files((WeightFile("toy_needs_weights.pth", "https://example.invalid/toy_needs_weights.pth"),),
                     progress=False)


class FailOnRank(MeanAbs):
    """MeanAbs, except on the torchrun rank named by ``$PERCEPBENCH_TEST_FAIL_RANK``: there it raises a
    ``RuntimeError`` (``$PERCEPBENCH_TEST_FAIL_HOW=raise``, the default) or ends the process with exit code 3
    (``exit``: a rank that dies, as when it is killed), once the file ``$PERCEPBENCH_TEST_FAIL_AFTER`` exists
    when that is set (so that rank 0 has written what comes before)."""

    def distance(self, preds, target):
        if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get("PERCEPBENCH_TEST_FAIL_RANK"):
            if os.environ.get("PERCEPBENCH_TEST_FAIL_HOW") == "exit":
                after = os.environ.get("PERCEPBENCH_TEST_FAIL_AFTER")
                for _ in range(1200 if after else 0):
                    if os.path.exists(after):
                        break
                    time.sleep(0.05)
                time.sleep(0.5 if after else 0)  # the results file follows the samples file
                os._exit(3)
            raise RuntimeError(f"failure injected on rank {os.environ['RANK']}")
        return super().distance(preds, target)
