"""PieAPP spec (``pieapp``) and the facts it shares with the implementation in
:mod:`percepbench.metrics_registry.pieapp`: the weight file, the patch size and the default stride.

Sources, checked (2026-11) with the search/fetch tools:

- The authors' repository ``prashnani/PerceptualImageError`` (``model/PieAPPv0pt1_PT.py``,
  ``test_PieAPP_PT.py``, ``scripts/download_PieAPPv0.1_PT_weights.sh``, ``LICENSE.txt``, README): the
  PyTorch weights ``PieAPPv0.1.pth`` come from ``https://web.ece.ucsb.edu/~ekta/projects/PieAPPv0.1/weights/``
  (fetched with ``--no-check-certificate``); images are read with OpenCV (BGR, float 0..255); 64x64
  patches on a strided grid; the README recommends stride 6 ("dense") for accuracy and stride 27
  ("sparse") for speed, and its demo defaults to dense. Licence: "Modified BSD-2 License - for
  Non-Commercial Use Only" (The Regents of the University of California); it covers the weights the
  repository distributes.
- piq 0.8.0 (``piq/pieapp.py``, installed here) downloads the same file name from its own GitHub release
  (the URL below), reshapes ``ref_score_subtract.weight`` from (1,) to (1, 1) before loading, uses stride
  27 by default and feeds **RGB** channels (the authors' model was run on BGR).
- pyiqa 0.1.x (read, not copied) stores it as ``PieAPPv0.1-0937b014.pth``, stride 27, BGR input.
- sha256: ``0937b014...baf0`` is pinned for exactly the piq release URL below by an unrelated public
  project (``vidaio``'s scoring backend), and its first 8 digits agree with pyiqa's hash-suffixed file
  name. **Not verified by downloading here** (no network beyond package registries); a wrong hash would
  show as a clear sha256 mismatch on first download.

Not verified: that piq's release file is byte-identical to the authors' UCSB file; the file's key layout
beyond what the authors' and piq's loading code implies (``conv1..conv11``, ``fc1_score``, ``fc2_score``,
``fc1_weight``, ``fc2_weight``, ``ref_score_subtract`` weights and biases, ``ref_score_subtract.weight``
stored with shape (1,)).
"""

from __future__ import annotations

from percepbench.registry import register_metric
from percepbench.specs import InputConvention, MetricSpec, WeightFile

CITATION = ("Prashnani, Cai, Mostofi, Sen. PieAPP: Perceptual Image-Error Assessment through Pairwise "
            "Preference. CVPR 2018.")

#: the authors' original download location (HTTPS with a certificate the authors' script skips checking)
AUTHORS_URL = "https://web.ece.ucsb.edu/~ekta/projects/PieAPPv0.1/weights/PieAPPv0.1.pth"

#: PieAPP v0.1 PyTorch weights, from piq's GitHub release (the URL piq 0.8.0 itself uses)
WEIGHTS = WeightFile(
    filename="pieapp/PieAPPv0.1.pth",
    url="https://github.com/photosynthesis-team/piq/releases/download/v0.5.4/PieAPPv0.1.pth",
    sha256="0937b01480c7a637ae3018af755faa8ecde4788b52bb246b7ae62cf96fb6baf0",
)

#: side of the square patches the network compares
PATCH = 64
#: default patch stride: piq's and pyiqa's (the authors' "sparse" mode), so scores match their tables
DEFAULT_STRIDE = 27
#: the authors' recommended stride for accuracy ("dense" mode)
DENSE_STRIDE = 6

register_metric(MetricSpec(
    name="pieapp",
    target="percepbench.metrics_registry.pieapp:PieAPPMetric",
    kwargs={"stride": DEFAULT_STRIDE},
    description=(f"PieAPP v0.1: weighted mean of per-patch errors on {PATCH}x{PATCH} patches; stride "
                 f"{DEFAULT_STRIDE} (piq/pyiqa, the authors' 'sparse' mode) by default, stride={DENSE_STRIDE} "
                 "is the authors' recommended 'dense' mode; asymmetric: first image = reference"),
    distance="identity (PieAPP error of the second image with respect to the first; higher = more different)",
    inputs=InputConvention(min_size=PATCH),
    weights=(WEIGHTS,),
    reference=("piq 0.8.0 PieAPP on BGR-flipped input (parity on random weights in tests/test_pieapp.py); "
               f"weights PieAPPv0.1.pth from {WEIGHTS.url} (sha256 {WEIGHTS.sha256}, from public sources, "
               f"not downloaded here), originally {AUTHORS_URL}"),
    licence=("weights and reference code: Modified BSD-2 License for non-commercial use only (UC Regents); "
             "commercial use needs UCSB's permission"),
    citation=CITATION,
    precisions=("fp32",),
))
