"""ST-LPIPS specs (``stlpips.alex``, the default, and ``stlpips.vgg``) and the facts they share with the
implementation in :mod:`percepbench.metrics_registry.stlpips`: the authors' weight files, channels,
smallest input sizes.

Sources, checked (2026-11) with the search/fetch tools against the authors' repository
``abhijay9/ShiftTolerant-LPIPS`` (BSD-2-Clause, commit ``9a53cd5a``) and the authors' PyPI wheel
``stlpips-pytorch`` 0.0.2:

- The released metrics are ``stlpips.LPIPS(net="alex"|"vgg", variant="shift_tolerant")``; their whole
  network (trunk trained from scratch on BAPPS with the linear heads, per the README's training commands
  ``--from_scratch --train_trunk``) is one file each, ``stlpips/weights/vST0.0/<net>_shift_tolerant.pth``.
- The files in the git repository at that commit and in the 0.0.2 wheel are the same bytes (git blob ids
  ``8eb1cab2...`` alex, ``ea846ce7...`` vgg, recomputed from the wheel's files); the sha256 and sizes below
  were computed here from the wheel's copies. They are plain git blobs (not Git LFS pointers), so GitHub's
  raw URL at the pinned commit serves them.
- Key layout (read from the files): ``scaling_layer.{shift,scale}``, ``net.slice<k>.<i>.{weight,bias}``
  for the convolutions, ``net.slice<k>.<i>.filt`` for the fixed blur filters, ``lin<k>.model.1.weight``.

Not verified: that the raw URL still answers (no network here beyond the package registries); the first
download checks the recorded sha256.
"""

from __future__ import annotations

from percepbench.registry import register_metric
from percepbench.specs import IMAGENET, InputConvention, MetricSpec, WeightFile

CITATION = "Ghildyal, Liu. Shift-tolerant Perceptual Similarity Metric. ECCV 2022."

NETS = ("alex", "vgg")

#: the authors' repository and the commit whose weight files are hashed below
REPOSITORY = "https://github.com/abhijay9/ShiftTolerant-LPIPS"
COMMIT = "9a53cd5a2a3bc837c9a6e4445cc1ffb302127a74"
#: the authors' PyPI release that ships the same two files (``stlpips_pytorch/weights/vST0.0/``)
PACKAGE_VERSION = "0.0.2"


def _weights(net: str, sha256: str, size: int) -> WeightFile:
    name = f"{net}_shift_tolerant.pth"
    return WeightFile(filename=f"stlpips/vST0.0/{name}",
                      url=f"https://raw.githubusercontent.com/abhijay9/ShiftTolerant-LPIPS/{COMMIT}/stlpips/"
                          f"weights/vST0.0/{name}",
                      sha256=sha256, size=size)


#: the authors' released networks (trunk + heads + scaling constants + blur filters), full sha256
WEIGHTS: dict[str, WeightFile] = {
    "alex": _weights("alex", "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee", 9_899_296),
    "vgg": _weights("vgg", "44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250", 58_907_298),
}

#: channels of the compared layers (the same as LPIPS')
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}

#: smallest image side each trunk accepts (below it a reflection pad or pooling layer gets too small an input)
MIN_SIZE = {"alex": 21, "vgg": 18}

_DESCRIPTIONS = {
    "alex": "ST-LPIPS (shift-tolerant LPIPS), anti-aliased AlexNet trunk trained from scratch (the default)",
    "vgg": "ST-LPIPS (shift-tolerant LPIPS), anti-aliased VGG16 trunk trained from scratch",
}

for _net in NETS:
    register_metric(MetricSpec(
        name=f"stlpips.{_net}",
        target="percepbench.metrics_registry.stlpips:STLPIPSMetric",
        kwargs={"net": _net},
        description=_DESCRIPTIONS[_net] + "; spatial maps via metric.spatial_map(x, y)",
        distance="identity (sum over layers of the spatially averaged head-weighted feature differences)",
        inputs=InputConvention(normalization=(IMAGENET,), min_size=MIN_SIZE[_net]),
        weights=(WEIGHTS[_net],),
        reference=(f"stlpips-pytorch {PACKAGE_VERSION} (the authors' package; parity on random weights in "
                   f"tests/test_stlpips.py); weights {_net}_shift_tolerant.pth sha256 {WEIGHTS[_net].sha256} from "
                   f"{REPOSITORY} at {COMMIT[:8]} (identical to the file in the {PACKAGE_VERSION} wheel)"),
        licence=("BSD-2-Clause (ST-LPIPS code and weights, Ghildyal & Liu); the blur-pool layer follows "
                 "Zhang's anti-aliased CNNs (reimplemented here, not copied)"),
        citation=CITATION,
        default=_net == "alex",
    ))
