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
file that :func:`ensure_files` finds failing it is deleted with its recorded hash.

A file with ``cache="package"`` ships inside an installed Python package (LPIPS' linear heads in
``lpips``, DISTS' alpha/beta in ``torchmetrics``): its path is ``<package directory>/<filename>``, found
with :func:`importlib.util.find_spec` (the package is not imported). It is present when the installed
package has the file; it is never downloaded (offline mode never concerns it) and its full sha256 is
checked on every :func:`ensure_files` without writing anything next to it (no ``.sha256`` sidecar in
``site-packages``). A missing package or file, or a hash mismatch, is a
:class:`~percepbench.errors.WeightsError` that names the file, the installed version and the version to
install.

:func:`verify_weight` is the one check of a present file (sha256, size, published prefix, package hash),
used by :func:`ensure_files` and by ``percepbench weights verify``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from percepbench.download import (
    MissingFile,
    download,
    extract_zip,
    file_lock,
    is_offline,
    offline_error,
    offline_reason,
    recorded_sha256,
    sha256_sidecar,
    verify_file,
)
from percepbench.errors import OfflineError, WeightsError
from percepbench.fileio import sha256_file
from percepbench.specs import MetricSpec, WeightFile

__all__ = [
    "cache_dir",
    "ensure_file",
    "ensure_files",
    "ensure_weights",
    "installed_version",
    "is_present",
    "missing_weights",
    "package_dir",
    "torch_hub_checkpoints",
    "usable_offline",
    "verify_weight",
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
    return hub_dir() / "percepbench"


def hub_dir() -> Path:
    """torch's hub dir, ``torch.hub.get_dir()``: read from torch when it is imported (``torch.hub.set_dir``
    may have moved it), else worked out as torch does (``$TORCH_HOME/hub``, else
    ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``) without importing torch, so that ``percepbench
    weights path`` answers at once."""
    if "torch.hub" in sys.modules:
        return Path(sys.modules["torch.hub"].get_dir())
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        torch_home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch")
    return Path(os.path.expanduser(torch_home)) / "hub"


def torch_hub_checkpoints() -> Path:
    """``<torch hub dir>/checkpoints``: torchvision's weights cache (resolved at call time, not created)."""
    return hub_dir() / "checkpoints"


def package_dir(package: str) -> Path | None:
    """The directory of the installed package ``package`` (an import name), or None when it is not
    installed. Found with :func:`importlib.util.find_spec`, without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(spec.origin).resolve().parent if spec.origin else None


def installed_version(package: str) -> str | None:
    """The installed version of the distribution named ``package``, or None when it cannot be read."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _install_hint(weight: WeightFile) -> str:
    return f"pip install --force-reinstall {weight.package}=={weight.package_version}"


def _root_for(weight: WeightFile, root: Path) -> Path:
    """The directory ``weight.filename`` is relative to: ``root``, torch hub's ``checkpoints``, or the
    installed package's directory (a WeightsError naming the package when it is not installed)."""
    if weight.cache == "package":
        assert weight.package is not None  # WeightFile checks it
        directory = package_dir(weight.package)
        if directory is None:
            raise WeightsError(f"{weight.filename} ships inside the Python package {weight.package!r}, which is "
                               f"not installed: pip install {weight.package}=={weight.package_version}")
        return directory
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

    For ``weight.cache == "torch_hub"``: ``<torch hub dir>/checkpoints/<filename>``, whatever ``cache`` is;
    for ``"package"``: ``<installed package directory>/<filename>``.

    Raises:
        WeightsError: the file ships in a package that is not installed (the message says what to install).
    """
    return _inside(_root_for(weight, cache_dir(cache)), weight.filename, "filename")


def is_present(weight: WeightFile, cache: str | Path | None = None) -> bool:
    """True when ``weight`` needs no download: its file exists, or for a zip its ``extract_to`` target does.
    A file shipped in a package is present when the package is installed and has the file.

    Existence only; :func:`ensure_files` also verifies checksums.
    """
    if weight.cache == "package":
        assert weight.package is not None
        directory = package_dir(weight.package)
        return directory is not None and _inside(directory, weight.filename, "filename").is_file()
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
    target = _inside(root, weight.extract_to or "", "extract_to")
    with file_lock(archive):  # one process extracts; the others wait, then find it extracted
        if not target.exists():
            extract_zip(archive, root)
    if not target.exists():
        raise WeightsError(f"zip {archive} (from {weight.url}) was extracted into {root} but does not contain "
                           f"{weight.extract_to!r}; the archive is not the expected one")


def ensure_files(files: Sequence[WeightFile], cache: str | Path | None = None, *, progress: bool = True) -> Path:
    """Make every file of ``files`` present and verified in the cache directory; return that directory.

    For each :class:`~percepbench.specs.WeightFile`:

    - a file shipped in a package is verified against its sha256 (:func:`verify_weight`); it is never
      downloaded, so offline mode does not concern it;
    - a plain file already in the cache is verified (:func:`verify_weight`: against its ``sha256`` when
      known, else against the hash recorded at download, and its published prefix), otherwise downloaded;
    - a zip (``extract_to`` set) counts as present when ``<cache>/<extract_to>`` exists; otherwise the
      archive is verified if it is already in the cache (no network needed), or downloaded, then extracted
      into the cache directory, and ``extract_to`` must exist afterwards. The archive and its
      ``.sha256`` are kept. The extraction holds the archive's lock (``<zip>.lock``, as its download
      does): a second process waits, then finds ``extract_to`` and extracts nothing.

    Args:
        files: the weight files, e.g. ``spec.weights``.
        cache: cache directory; default ``$PERCEPBENCH_CACHE``, else ``<torch hub dir>/percepbench``.
        progress: show download progress bars.

    Raises:
        OfflineError: offline mode is on and some file must be downloaded, or the network fails; one error
            lists every file still missing, with its path and URL (never a file shipped in a package).
        WeightsError: a file fails verification, a download returns an HTTP error, an archive is
            corrupt or unsafe, or a package that ships a file is not installed or lacks it; the message
            names the file.
    """
    root = cache_dir(cache)

    def needs_network(w: WeightFile) -> bool:
        return w.cache != "package" and not is_present(w, root) and not weight_path(w, root).is_file()

    if is_offline() and (to_fetch := [w for w in files if needs_network(w)]):
        raise offline_error([_missing_entry(w, root) for w in to_fetch], offline_reason())
    for w in files:
        if w.cache == "package":
            verify_weight(w, root)
            continue
        path = weight_path(w, root)
        if is_present(w, root):
            if w.extract_to is None:
                verify_weight(w, root, delete_bad=True)
            continue
        if path.is_file():
            verify_weight(w, root, delete_bad=True)
        else:
            try:
                download(w.url, path, sha256=w.sha256, size=w.size, progress=progress)
            except OfflineError as exc:  # the network failed: list everything still missing, not just this
                still = [_missing_entry(v, root) for v in files if needs_network(v)]
                raise offline_error(still, exc.reason) from exc
            _check_prefix(w, path, recorded_sha256(path), delete_bad=True)
        if w.extract_to is not None:
            _extract(w, path, root)
    return root


def ensure_file(weight: WeightFile, cache: str | Path | None = None, *, progress: bool = True) -> Path:
    """:func:`ensure_files` for one file; return its verified path (:func:`weight_path`)."""
    root = ensure_files([weight], cache, progress=progress)
    return weight_path(weight, root)


def verify_weight(weight: WeightFile, cache: str | Path | None = None, *, delete_bad: bool = False) -> str:
    """Check one present file against everything known about it; return its sha256.

    - Shipped in a package: the file's sha256 must equal ``weight.sha256`` (nothing is written).
    - Otherwise (``<cache>/<filename>``, or the archive of a zip): :func:`~percepbench.download.verify_file`
      (size when known; the full ``sha256`` when known, else the hash recorded at download, recording it
      for a file placed by hand), then the published ``sha256_prefix`` when no full hash is known.
      ``delete_bad=True`` deletes a file failing its prefix, with its recorded hash (what
      :func:`ensure_files` does, so the next use downloads it again).

    Raises:
        WeightsError: the file is missing, its package is not installed, or a check fails; the message
            names the file (and for a package file, the installed and the expected package version).
    """
    path = weight_path(weight, cache)
    if weight.cache == "package":
        return _verify_package_file(weight, path)
    digest = verify_file(path, weight.sha256, size=weight.size)
    _check_prefix(weight, path, digest, delete_bad=delete_bad)
    return digest


def _verify_package_file(weight: WeightFile, path: Path) -> str:
    installed = installed_version(weight.package or "") or "(version unknown)"
    if not path.is_file():
        raise WeightsError(f"{path} does not exist: the installed {weight.package} {installed} does not ship "
                           f"{weight.filename} (percepbench expects the file of {weight.package} "
                           f"{weight.package_version}); {_install_hint(weight)}")
    digest = sha256_file(path)
    if digest != weight.sha256:
        raise WeightsError(f"{path} (shipped in {weight.package} {installed}) has sha256 {digest}, expected "
                           f"{weight.sha256} (the file of {weight.package} {weight.package_version}): the "
                           f"installed package is modified or another version; {_install_hint(weight)}")
    return digest


def _check_prefix(weight: WeightFile, path: Path, digest: str | None, *, delete_bad: bool) -> None:
    """Enforce ``weight.sha256_prefix`` (when set and no full hash is known)."""
    if weight.sha256 is not None or weight.sha256_prefix is None:
        return
    if digest is None or not digest.startswith(weight.sha256_prefix):
        if delete_bad:
            path.unlink(missing_ok=True)
            sha256_sidecar(path).unlink(missing_ok=True)
            what = "the file was deleted: download it again"
        else:
            what = "delete it and download it again"
        raise WeightsError(f"{path} (from {weight.url}) has sha256 {digest}, which does not start with the "
                           f"published prefix {weight.sha256_prefix}; {what}")


def ensure_weights(spec: MetricSpec, cache: str | Path | None = None, *, progress: bool = True) -> Path:
    """:func:`ensure_files` for every weight file of a metric spec; return the cache directory."""
    return ensure_files(spec.weights, cache, progress=progress)
