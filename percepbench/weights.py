"""Where weight files live, whether a metric's files are present, and fetching them.

Cache directory, resolved at call time: the ``cache_dir`` argument, else ``$PERCEPBENCH_CACHE``, else
``<torch hub dir>/percepbench`` (torch's hub dir honours ``$TORCH_HOME``).

A :class:`~percepbench.specs.WeightFile` is present when ``<cache>/<filename>`` is a file, or, for a zip
archive (``extract_to`` set), when ``<cache>/<extract_to>`` exists. :func:`ensure_files` makes every
file of a list present: it verifies what is there (sha256, see :mod:`percepbench.download`), downloads
what is not, and extracts archives. In offline mode (``PERCEPBENCH_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``)
it raises one :class:`~percepbench.errors.OfflineError` that lists every missing file with its path and
URL.

A file with ``cache="torch_hub"`` lives under ``<torch hub dir>/checkpoints`` instead (torch's hub dir
honours ``$TORCH_HOME``; the ``cache_dir`` argument and ``$PERCEPBENCH_CACHE`` do not move it): that is
where torchvision looks for its pretrained weights, so LPIPS and DISTS trunks fetched by percepbench are
also what torchvision would load, and vice versa. A file with only a ``sha256_prefix`` (torchvision's file
names embed 8 hex digits of the hash) is checked against that prefix after download or verification; a
file that fails it is deleted with its recorded hash.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from percepbench.download import (
    MissingFile,
    download,
    extract_zip,
    is_offline,
    offline_error,
    offline_reason,
    recorded_sha256,
    sha256_sidecar,
    verify_file,
)
from percepbench.errors import OfflineError, WeightsError
from percepbench.specs import MetricSpec, WeightFile

__all__ = [
    "cache_dir",
    "ensure_files",
    "ensure_weights",
    "is_present",
    "missing_weights",
    "torch_hub_checkpoints",
    "usable_offline",
    "weight_path",
]


def cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The weights cache directory: the argument, else ``$PERCEPBENCH_CACHE``, else under torch's hub dir.

    Resolved at call time; not created.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PERCEPBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "percepbench"


def torch_hub_checkpoints() -> Path:
    """``<torch hub dir>/checkpoints``: torchvision's weights cache (resolved at call time, not created)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _root_for(weight: WeightFile, root: Path) -> Path:
    """The directory ``weight.filename`` is relative to: ``root`` or torch hub's ``checkpoints``."""
    return torch_hub_checkpoints() if weight.cache == "torch_hub" else root


def _inside(root: Path, relative: str, what: str) -> Path:
    """``root / relative`` after checking ``relative`` stays inside ``root``."""
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if (not relative or posix.is_absolute() or windows.is_absolute() or windows.drive
            or ".." in posix.parts or ".." in windows.parts):
        raise WeightsError(f"weight {what} {relative!r} must be a relative path inside the cache directory")
    return root / posix


def weight_path(weight: WeightFile, cache: str | Path | None = None) -> Path:
    """Where ``weight`` is downloaded to: ``<cache>/<filename>`` (for an archive, the archive itself).

    For ``weight.cache == "torch_hub"``: ``<torch hub dir>/checkpoints/<filename>``, whatever ``cache`` is.
    """
    return _inside(_root_for(weight, cache_dir(cache)), weight.filename, "filename")


def is_present(weight: WeightFile, cache: str | Path | None = None) -> bool:
    """True when ``weight`` needs no download: its file exists, or for a zip its ``extract_to`` target does.

    Existence only; :func:`ensure_files` also verifies checksums.
    """
    root = _root_for(weight, cache_dir(cache))
    if weight.extract_to is not None:
        return _inside(root, weight.extract_to, "extract_to").exists()
    return _inside(root, weight.filename, "filename").is_file()


def missing_weights(spec: MetricSpec, cache: str | Path | None = None) -> list[str]:
    """Filenames of ``spec.weights`` not present in the cache directory (see :func:`is_present`)."""
    root = cache_dir(cache)
    return [w.filename for w in spec.weights if not is_present(w, root)]


def usable_offline(spec: MetricSpec, cache: str | Path | None = None) -> bool:
    """True when the metric needs no weights or all of them are in the cache."""
    return not missing_weights(spec, cache)


def _missing_entry(weight: WeightFile, root: Path) -> MissingFile:
    root = _root_for(weight, root)
    path = _inside(root, weight.filename, "filename")
    note = ""
    if weight.extract_to is not None:
        target = _inside(root, weight.extract_to, "extract_to")
        note = (f"a zip: percepbench extracts it into {root} on next use; or extract it yourself so that "
                f"{target} exists")
    return MissingFile(path, weight.url, note)


def _extract(weight: WeightFile, archive: Path, root: Path) -> None:
    root = _root_for(weight, root)
    extract_zip(archive, root)
    target = _inside(root, weight.extract_to or "", "extract_to")
    if not target.exists():
        raise WeightsError(f"zip {archive} (from {weight.url}) was extracted into {root} but does not contain "
                           f"{weight.extract_to!r}; the archive is not the expected one")


def ensure_files(files: Sequence[WeightFile], cache: str | Path | None = None, *, progress: bool = True) -> Path:
    """Make every file of ``files`` present and verified in the cache directory; return that directory.

    For each :class:`~percepbench.specs.WeightFile`:

    - a plain file already in the cache is verified (:func:`~percepbench.download.verify_file`: against
      its ``sha256`` when known, else against the hash recorded at download), otherwise downloaded;
    - a zip (``extract_to`` set) counts as present when ``<cache>/<extract_to>`` exists; otherwise the
      archive is verified if it is already in the cache (no network needed), or downloaded, then extracted
      into the cache directory, and ``extract_to`` must exist afterwards. The archive and its
      ``.sha256`` are kept.

    Args:
        files: the weight files, e.g. ``spec.weights``.
        cache: cache directory; default ``$PERCEPBENCH_CACHE``, else ``<torch hub dir>/percepbench``.
        progress: show download progress bars.

    Raises:
        OfflineError: offline mode is on and some file must be downloaded, or the network fails; one error
            lists every file still missing, with its path and URL.
        WeightsError: a file fails verification, a download returns an HTTP error, or an archive is
            corrupt or unsafe; the message names the file.
    """
    root = cache_dir(cache)

    def needs_network(w: WeightFile) -> bool:
        return not is_present(w, root) and not weight_path(w, root).is_file()

    if is_offline() and (to_fetch := [w for w in files if needs_network(w)]):
        raise offline_error([_missing_entry(w, root) for w in to_fetch], offline_reason())
    for w in files:
        path = weight_path(w, root)
        if is_present(w, root):
            if w.extract_to is None:
                _check_prefix(w, path, verify_file(path, w.sha256, size=w.size))
            continue
        if path.is_file():
            _check_prefix(w, path, verify_file(path, w.sha256, size=w.size))
        else:
            try:
                download(w.url, path, sha256=w.sha256, size=w.size, progress=progress)
            except OfflineError as exc:  # the network failed: list everything still missing, not just this
                still = [_missing_entry(v, root) for v in files if needs_network(v)]
                raise offline_error(still, exc.reason) from exc
            _check_prefix(w, path, recorded_sha256(path))
        if w.extract_to is not None:
            _extract(w, path, root)
    return root


def _check_prefix(weight: WeightFile, path: Path, digest: str | None) -> None:
    """Enforce ``weight.sha256_prefix`` (when set and no full hash is known); delete a file that fails it."""
    if weight.sha256 is not None or weight.sha256_prefix is None:
        return
    if digest is None or not digest.startswith(weight.sha256_prefix):
        path.unlink(missing_ok=True)
        sha256_sidecar(path).unlink(missing_ok=True)
        raise WeightsError(f"{path} (from {weight.url}) has sha256 {digest}, which does not start with the "
                           f"published prefix {weight.sha256_prefix}; the file was deleted: download it again")


def ensure_weights(spec: MetricSpec, cache: str | Path | None = None, *, progress: bool = True) -> Path:
    """:func:`ensure_files` for every weight file of a metric spec; return the cache directory."""
    return ensure_files(spec.weights, cache, progress=progress)
