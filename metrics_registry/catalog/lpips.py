"""LPIPS specs (``lpips.alex``, ``lpips.vgg``, ``lpips.squeeze``) and the facts they share with the
implementation in :mod:`percepbench.metrics_registry.lpips_metric`: trunk and head weight files, channels,
smallest input sizes.
"""

from __future__ import annotations

from percepbench.registry import register_metric
from percepbench.specs import IMAGENET, InputConvention, MetricSpec, WeightFile

CITATION = ("Zhang, Isola, Efros, Shechtman, Wang. The Unreasonable Effectiveness of Deep Features as a "
            "Perceptual Metric. CVPR 2018.")

NETS = ("alex", "vgg", "squeeze")
VERSIONS = ("0.1", "0.0")

#: torchvision's ImageNet trunks (``AlexNet_Weights.IMAGENET1K_V1`` etc.), in torchvision's own cache.
#: Their file names embed the first 8 hex digits of the sha256, checked after download.
TRUNK_WEIGHTS: dict[str, WeightFile] = {
    "alex": WeightFile(filename="alexnet-owt-7be5be79.pth",
                       url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                       cache="torch_hub", sha256_prefix="7be5be79"),
    "vgg": WeightFile(filename="vgg16-397923af.pth",
                      url="https://download.pytorch.org/models/vgg16-397923af.pth",
                      cache="torch_hub", sha256_prefix="397923af"),
    "squeeze": WeightFile(filename="squeezenet1_1-b8a52dc0.pth",
                          url="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
                          cache="torch_hub", sha256_prefix="b8a52dc0"),
}

#: the lpips release whose wheel ships the linear heads hashed below
LPIPS_VERSION = "0.1.4"


def _head(version: str, net: str, sha256: str) -> WeightFile:
    return WeightFile(filename=f"weights/v{version}/{net}.pth", url=f"https://pypi.org/project/lpips/{LPIPS_VERSION}/",
                      sha256=sha256, cache="package", package="lpips", package_version=LPIPS_VERSION)


#: the linear-head files shipped in the lpips 0.1.4 wheel, ``(version, net) -> WeightFile`` (full sha256)
HEAD_WEIGHTS: dict[tuple[str, str], WeightFile] = {
    ("0.1", "alex"): _head("0.1", "alex", "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
    ("0.1", "squeeze"): _head("0.1", "squeeze", "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76"),
    ("0.1", "vgg"): _head("0.1", "vgg", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
    ("0.0", "alex"): _head("0.0", "alex", "18720f55913d0af89042f13faa7e536a6ce1444a0914e6db9461355ece1e8cd5"),
    ("0.0", "squeeze"): _head("0.0", "squeeze", "c27abd3a0145541baa50990817df58d3759c3f8154949f42af3b59b4e042d0bf"),
    ("0.0", "vgg"): _head("0.0", "vgg", "b9e4236260c3dd988fc79d2a48d645d885afcbb21f9fd595e6744cf7419b582c"),
}

#: channels of the compared layers (the package's ``chns``)
CHANNELS = {
    "alex": (64, 192, 384, 256, 256),
    "vgg": (64, 128, 256, 512, 512),
    "squeeze": (64, 128, 256, 384, 384, 512, 512),
}

#: smallest image side each trunk accepts (below it a pooling layer gets an empty input)
MIN_SIZE = {"alex": 31, "vgg": 16, "squeeze": 17}


_DESCRIPTIONS = {
    "alex": "LPIPS v0.1, AlexNet trunk (the standard LPIPS)",
    "vgg": "LPIPS v0.1, VGG16 trunk",
    "squeeze": "LPIPS v0.1, SqueezeNet1.1 trunk",
}

for _net in NETS:
    register_metric(MetricSpec(
        name=f"lpips.{_net}",
        target="percepbench.metrics_registry.lpips_metric:LPIPSMetric",
        kwargs={"net": _net, "version": "0.1"},
        description=_DESCRIPTIONS[_net] + "; option version='0.0', spatial maps via metric.spatial_map(x, y)",
        distance="identity (sum over layers of the spatially averaged head-weighted feature differences)",
        inputs=InputConvention(normalization=(IMAGENET,), min_size=MIN_SIZE[_net]),
        weights=(TRUNK_WEIGHTS[_net], HEAD_WEIGHTS[("0.1", _net)]),
        reference=(f"lpips {LPIPS_VERSION} (parity on random trunks in tests/test_lpips_metric.py); heads from "
                   f"the lpips wheel: v0.1/{_net}.pth sha256 {HEAD_WEIGHTS[('0.1', _net)].sha256}, v0.0/{_net}.pth "
                   f"sha256 {HEAD_WEIGHTS[('0.0', _net)].sha256}; trunk: torchvision ImageNet weights "
                   f"{TRUNK_WEIGHTS[_net].filename}"),
        licence="BSD-2-Clause (lpips code and heads); trunk weights: torchvision (BSD-3-Clause)",
        citation=CITATION,
        default=_net == "alex",
    ))
