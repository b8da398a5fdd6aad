"""Human-judgment datasets: where they live, where they come from, fetching them, and checking them.

``percepbench data download nights|bapps|things [--root DIR] [--parts ...]`` and ``percepbench data
verify NAME`` are thin wrappers over :func:`download_dataset` and :func:`verify_dataset`.

**Data root.** :func:`data_root`: the argument, else ``$PERCEPBENCH_DATA``, else
``$XDG_CACHE_HOME/percepbench/data`` (``~/.cache/percepbench/data`` when ``XDG_CACHE_HOME`` is unset).
The tasks (``nights``, ``bapps_2afc``, ``things``) resolve a missing ``--data-root`` the same way, so
``percepbench data download nights`` followed by ``percepbench run -t nights`` needs no flag at all, and
the same ``--root``/``--data-root`` (or ``PERCEPBENCH_DATA``) always points both at the same files. The
default is a per-user cache folder rather than ``./data`` because a path relative to the working
directory would make a run started from another folder miss the downloads; weights live under a cache
folder too (torch's). NIGHTS needs about 58 GB: point ``PERCEPBENCH_DATA`` at a large disk.

**Layout.** Each dataset has a folder under the data root (``nights/``, ``bapps/``, ``things/``) whose
content is what the tasks read (see :data:`DATASETS`, ``layout``). percepbench keeps its bookkeeping in
``<folder>/.percepbench/``: ``downloads/`` (archives; deleted after a successful extraction unless
``keep_archives``), ``done/<part>.json`` (one marker per extracted part) and short-lived ``staging-*``
folders.

**Download.** Each dataset is a list of parts (an archive, or one member of a remote zip). A part is
skipped when its marker exists and every file it recorded is still there with the recorded size, so a
second call downloads and extracts nothing, and deleting or truncating a file makes the next call fetch
that part again. Otherwise the archive is downloaded with :func:`percepbench.download.download`
(progress bar, resume of ``.part`` files across calls and dropped connections, sha256 recorded in a
sidecar at the first download, as for weights: no sha256 is published for these archives), extracted
with :func:`~percepbench.download.extract_zip` / :func:`~percepbench.download.extract_tar` (integrity
check, path traversal, links and device files refused) into a staging folder, and each path the part
produces is renamed into place; the marker is written last, atomically, so an interrupted extraction is
redone. A corrupt or unsafe archive is deleted (the next call downloads it again) and nothing of it is
installed. In offline mode (``PERCEPBENCH_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``) one
:class:`~percepbench.errors.OfflineError` lists every archive still needed with its URL, the path to put
it at and where it is extracted to.

**Mirrors and tests.** ``PERCEPBENCH_DATA_URL_<NAME>`` (e.g. ``PERCEPBENCH_DATA_URL_BAPPS``) replaces the
base URL of a dataset; the file names under it stay the same.

**Sources** (URLs from the dataset authors; "verified" = published by the authors' own scripts or pages
as recorded in percepbench's reference notes, not fetched by percepbench's tests, which use a local
server):

- NIGHTS, default parts: ``https://data.csail.mit.edu/nights/nights_chunked/ref/000.zip`` ... ``099.zip``
  and ``.../distort/000.zip`` ... ``099.zip`` (verified: the official chunked script), plus ``data.csv``.
  The chunked script forgets ``data.csv`` and no standalone URL for it is known, so percepbench reads
  the one member ``nights/data.csv`` out of the verified ``https://data.csail.mit.edu/nights/nights.zip``
  with HTTP range requests (the zip's central directory, then that member: a few MB, not the whole
  archive); this needs a server that honours ``Range``, and fails with instructions otherwise. Option
  ``parts="zip"``: the single ``nights.zip`` instead (verified URL; needs room for the archive and its
  extracted content at once, whereas a chunk is deleted as soon as it is extracted). **Not verified**: the internal
  layout of the chunk zips. The official script unzips ``ref/NNN.zip`` into ``ref/``, which suggests
  members ``NNN/<file>.png``; extraction accepts that and also a leading ``nights/`` and/or
  ``ref/``/``distort/`` component, or the images at the top of the zip, and fails naming the archive if
  it finds none of these.
- BAPPS: ``https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/{jnd,twoafc_val,
  twoafc_train}.tar.gz`` (verified URLs); default parts ``jnd`` and ``twoafc_val``; ``twoafc_train``
  on request. **Not verified**: that they extract to ``dataset/jnd/...`` and ``dataset/2afc/{val,train}
  /...``; a missing leading ``dataset/`` (or ``2afc/``) is accepted too.
- THINGS odd-one-out: no direct file URL is verified (the triplet file is on OSF project b2a4j, the
  images come from the THINGS database), so :func:`download_dataset` never fetches anything for it: it
  checks what is there and otherwise raises :class:`ManualDownloadError` saying exactly what to fetch
  and where to put it.

The Hugging Face ``datasets`` library is not used: none of these datasets is published on the Hub by
its authors, and the tasks read plain files.
"""

from __future__ import annotations

import difflib
import http.client
import io
import json
import os
import re
import shlex
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import percepbench.download as _dl
from percepbench.download import (
    MissingFile,
    download,
    extract_tar,
    extract_zip,
    is_offline,
    offline_error,
    offline_reason,
    recorded_sha256,
    sha256_sidecar,
)
from percepbench.errors import DataError, OfflineError, UsageError, WeightsError

__all__ = [
    "DATASETS",
    "DatasetSource",
    "ManualDownloadError",
    "Part",
    "data_root",
    "dataset_dir",
    "download_command",
    "download_dataset",
    "get_source",
    "select_parts",
    "verify_dataset",
]

DATA_ENV = "PERCEPBENCH_DATA"
URL_ENV_PREFIX = "PERCEPBENCH_DATA_URL_"
STATE_DIR = ".percepbench"
_CHUNK = 1 << 20
_RANGE_BUFFER = 1 << 20
_USER_AGENT = "percepbench (+https://github.com/percepbench)"
_MAX_LISTED = 5


class ManualDownloadError(DataError):
    """A dataset percepbench cannot fetch by itself; the message says what to fetch and where to put it."""


# ------------------------------------------------------------------------------------------------- root


def data_root(root: str | Path | None = None) -> Path:
    """The data root: ``root``, else ``$PERCEPBENCH_DATA``, else ``$XDG_CACHE_HOME/percepbench/data``
    (``~/.cache/percepbench/data`` without ``XDG_CACHE_HOME``). Resolved at call time; not created.
    """
    if root not in (None, ""):
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "percepbench" / "data"


def dataset_dir(name: str, root: str | Path | None = None) -> Path:
    """``<data root>/<folder of the dataset>``, e.g. ``~/.cache/percepbench/data/nights``."""
    return data_root(root) / get_source(name).folder


def download_command(name: str, root: str | Path | None = None, parts: Sequence[str] | None = None,
                     action: str = "download") -> str:
    """The exact shell command that fetches (or verifies) ``name`` under the resolved data root."""
    cmd = ["percepbench", "data", action, name, "--root", str(data_root(root))]
    if parts:
        cmd += ["--parts", ",".join(parts)]
    return shlex.join(cmd)


# ------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Part:
    """One downloadable piece of a dataset.

    Attributes:
        name: id used with ``parts=`` (``"ref/000"``, ``"csv"``, ``"jnd"``).
        path: URL path under the dataset's base URL (``"nights_chunked/ref/000.zip"``).
        kind: ``"zip"``, ``"tar"`` (any compression) or ``"zip_member"`` (one member of a remote zip,
            read with HTTP range requests).
        produces: paths under the dataset folder this part creates (folders, or files when they have a
            suffix), e.g. ``("ref/000",)``.
        size: archive size in bytes when known (checked after download).
        sha256: archive sha256 when known; otherwise recorded at the first download.
        member: for ``zip_member``: the member's name inside the remote zip.
        flat: the archive may hold the content of ``produces[0]`` at its top (no leading folders).
        approx: approximate size for people (``"1.1 GB"``).
    """

    name: str
    path: str
    kind: str
    produces: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    member: str | None = None
    flat: bool = False
    approx: str = ""

    @property
    def filename(self) -> str:
        """Local archive name: the URL path with ``/`` replaced (``nights_chunked-ref-000.zip``)."""
        return self.path.replace("/", "-")

    @property
    def marker_name(self) -> str:
        return self.name.replace("/", "-") + ".json"


@dataclass(frozen=True)
class DatasetSource:
    """Everything percepbench knows about getting one dataset; see the module docstring for the URLs."""

    name: str
    title: str
    folder: str
    description: str
    licence: str
    citation: str
    approx_size: str
    base_url: str
    parts: tuple[Part, ...]
    default_parts: tuple[str, ...]
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    strip_prefixes: tuple[str, ...] = ()
    extraction: str = ""
    layout: str = ""
    manual: str = ""

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)

    def resolved_base_url(self) -> str:
        """``$PERCEPBENCH_DATA_URL_<NAME>`` when set (a mirror, or a test server), else :attr:`base_url`."""
        return os.environ.get(URL_ENV_PREFIX + self.name.upper(), "").strip() or self.base_url

    def url(self, part: Part) -> str:
        return self.resolved_base_url().rstrip("/") + "/" + part.path


def _nights(chunks: int = 100) -> DatasetSource:
    """The NIGHTS source with ``chunks`` chunk zips per kind (100 officially; tests use fewer)."""
    chunk_parts = tuple(
        Part(f"{kind}/{i:03d}", f"nights_chunked/{kind}/{i:03d}.zip", "zip", (f"{kind}/{i:03d}",), flat=True)
        for kind in ("ref", "distort") for i in range(chunks))
    ref = tuple(p.name for p in chunk_parts if p.name.startswith("ref/"))
    distort = tuple(p.name for p in chunk_parts if p.name.startswith("distort/"))
    csv = Part("csv", "nights.zip", "zip_member", ("data.csv",), member="nights/data.csv", approx="a few MB")
    whole = Part("zip", "nights.zip", "zip", ("data.csv", "ref", "distort"), approx="58 GB unzipped")
    return DatasetSource(
        name="nights", title="NIGHTS", folder="nights",
        description="NIGHTS: 20,019 synthetic image triplets with human 2AFC similarity votes (DreamSim paper); "
                    "percepbench scores the rows with votes >= 6",
        licence="see the DreamSim project (https://github.com/ssundaram21/dreamsim); images generated with "
                "Stable Diffusion",
        citation="Fu et al., DreamSim: Learning New Dimensions of Human Visual Similarity using Synthetic Data, "
                 "NeurIPS 2023",
        approx_size="about 58 GB unzipped",
        base_url="https://data.csail.mit.edu/nights/",
        parts=(csv, *chunk_parts, whole),
        default_parts=("csv", *ref, *distort),
        groups={"ref": ref, "distort": distort, "chunks": ref + distort, "default": ("csv", *ref, *distort)},
        strip_prefixes=("nights",),
        extraction="chunks: nights_chunked/ref/NNN.zip -> nights/ref/NNN/, nights_chunked/distort/NNN.zip -> "
                   "nights/distort/NNN/ (a leading nights/, ref/ or distort/ folder in the zip is accepted; "
                   "the chunks' internal layout is not verified); data.csv: the member nights/data.csv of "
                   "nights.zip, read with HTTP range requests; parts=zip: nights.zip extracted whole",
        layout="nights/data.csv, nights/ref/<000-099>/<000-999>.png, nights/distort/<000-099>/<file>_0.png|_1.png",
    )


def _bapps() -> DatasetSource:
    parts = (
        Part("jnd", "jnd.tar.gz", "tar", ("dataset/jnd",), approx="0.2 GB"),
        Part("twoafc_val", "twoafc_val.tar.gz", "tar", ("dataset/2afc/val",), approx="1.1 GB"),
        Part("twoafc_train", "twoafc_train.tar.gz", "tar", ("dataset/2afc/train",), approx="5.3 GB"),
    )
    return DatasetSource(
        name="bapps", title="BAPPS", folder="bapps",
        description="BAPPS (LPIPS paper): 64x64 patch triplets with human 2AFC judgments, and JND pairs",
        licence="BSD-2-Clause (richzhang/PerceptualSimilarity)",
        citation="Zhang et al., The Unreasonable Effectiveness of Deep Features as a Perceptual Metric, CVPR 2018",
        approx_size="jnd 0.2 GB + twoafc_val 1.1 GB (+ twoafc_train 5.3 GB)",
        base_url="https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/",
        parts=parts,
        default_parts=("jnd", "twoafc_val"),
        groups={"all": ("jnd", "twoafc_val", "twoafc_train"), "default": ("jnd", "twoafc_val")},
        strip_prefixes=(),
        extraction="each .tar.gz extracted into bapps/: jnd -> bapps/dataset/jnd/, twoafc_val -> "
                   "bapps/dataset/2afc/val/, twoafc_train -> bapps/dataset/2afc/train/ (the archives are "
                   "expected to hold dataset/...; a missing leading dataset/ or 2afc/ is accepted)",
        layout="bapps/dataset/2afc/{val,train}/<subset>/{ref,p0,p1,judge}/<stem>.png|.npy, "
               "bapps/dataset/jnd/val/{traditional,cnn}/{p0,p1,same}/<stem>.png|.npy",
    )


_THINGS_MANUAL = (
    "THINGS cannot be downloaded by percepbench: no direct file URL for it is verified, so it fetches "
    "nothing rather than guess. Fetch by hand:\n"
    "  1. the triplet file things_valset.txt (three image names per line; the third is the odd one out) "
    "from the OSF project https://osf.io/b2a4j/ (the THINGS odd-one-out validation triplets used by "
    "DreamSim's evaluation), and put it at {dest}/things_valset.txt;\n"
    "  2. every image it names, at {dest}/<name>.png (DreamSim's loader opens <root>/<name>.png; a name that "
    "already has an extension is used as is). The images come from the THINGS object image database "
    "(Hebart et al. 2019; its OSF project https://osf.io/jum2f/ is where it is distributed, under its own "
    "terms; percepbench has not verified the file names there): convert or rename them so that they match "
    "the names in the triplet file.\n"
    "Then check with `{verify}`, and run with --data-root {root} (or --task-args things:root={dest})."
)


def _things() -> DatasetSource:
    parts = (
        Part("triplets", "things_valset.txt", "manual", ("things_valset.txt",)),
        Part("images", "<name>.png", "manual", ()),
    )
    return DatasetSource(
        name="things", title="THINGS odd-one-out", folder="things",
        description="THINGS odd-one-out validation triplets as in DreamSim's evaluation (image 3 is the odd one)",
        licence="see the OSF projects b2a4j (triplets) and jum2f (THINGS images) for their terms",
        citation="Hebart et al., THINGS-data, eLife 12 (2023); Hebart et al., THINGS: A database of 1,854 "
                 "object concepts and more than 26,000 naturalistic object images, PLoS ONE 14(10) (2019)",
        approx_size="unknown (depends on the image set)",
        base_url="https://osf.io/b2a4j/",
        parts=parts,
        default_parts=("triplets", "images"),
        groups={"all": ("triplets", "images")},
        extraction="none: placed by hand",
        layout="things/things_valset.txt, things/<name>.png",
        manual=_THINGS_MANUAL,
    )


#: Every dataset percepbench can fetch or check, by name.
DATASETS: dict[str, DatasetSource] = {"nights": _nights(), "bapps": _bapps(), "things": _things()}


def get_source(name: str) -> DatasetSource:
    """The :class:`DatasetSource` called ``name``; :class:`UsageError` with "did you mean" otherwise."""
    key = str(name).strip().lower()
    if key in DATASETS:
        return DATASETS[key]
    msg = f"unknown dataset {name!r}"
    close = difflib.get_close_matches(key, list(DATASETS), n=3, cutoff=0.5)
    if close:
        msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    raise UsageError(msg + f" Known datasets: {', '.join(sorted(DATASETS))}")


def select_parts(source: DatasetSource, parts: str | Iterable[str] | None = None) -> list[Part]:
    """The parts named by ``parts`` (part names or group names; a string may separate them with commas,
    ``+`` or spaces), in the source's order; the default parts when ``parts`` is None or empty.

    Raises:
        UsageError: an unknown part name, with "did you mean" and the known names.
    """
    if isinstance(parts, str):
        tokens = [t for t in re.split(r"[,+\s]+", parts) if t]
    else:
        tokens = [str(t).strip() for t in (parts or ()) if str(t).strip()]
    if not tokens:
        tokens = list(source.default_parts)
    names = {p.name for p in source.parts}
    wanted: set[str] = set()
    for t in tokens:
        if t in source.groups:
            wanted.update(source.groups[t])
        elif t in names:
            wanted.add(t)
        else:
            known = sorted(source.groups) + [p.name for p in source.parts if "/" not in p.name]
            close = difflib.get_close_matches(t, [*source.groups, *names], n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"unknown {source.name} part {t!r}{hint} Known: {', '.join(known)}"
                             + (" and single chunks such as ref/007 or distort/042" if source.name == "nights"
                                else ""))
    return [p for p in source.parts if p.name in wanted]


# ------------------------------------------------------------------------------------------------- markers


def _state(dest: Path) -> Path:
    return dest / STATE_DIR


def _marker(dest: Path, part: Part) -> Path:
    return _state(dest) / "done" / part.marker_name


def _is_done(dest: Path, part: Part) -> bool:
    """The part's marker exists, and every file it recorded is there with the recorded size."""
    try:
        record = json.loads(_marker(dest, part).read_text(encoding="utf-8"))
        files = record["files"]
        if not isinstance(files, dict):
            return False
        for rel, size in files.items():
            if (dest / rel).stat().st_size != size:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((dest / rel).exists() for rel in part.produces)


def _write_marker(dest: Path, part: Part, url: str, sha256: str | None, files: dict[str, int], *,
                  adopted: bool = False) -> None:
    path = _marker(dest, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    record = {"part": part.name, "url": url, "archive_sha256": sha256, "extracted_at": time.time(),
              "files": files, "adopted": adopted}
    tmp.write_text(json.dumps(record, indent=0, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _placed_by_hand(dest: Path, part: Part) -> bool:
    """No marker, but everything the part produces is already there (a dataset unzipped by hand)."""
    if _marker(dest, part).exists():
        return False  # ours: a marker that no longer matches means damage, so fetch again
    for rel in part.produces:
        path = dest / rel
        if not (path.is_file() or (path.is_dir() and any(path.iterdir()))):
            return False
    return True


def _files_under(dest: Path, produced: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rel in produced:
        path = dest / rel
        items = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in items:
            out[f.relative_to(dest).as_posix()] = f.stat().st_size
    return out


# ------------------------------------------------------------------------------------------------ download


def download_dataset(name: str, root: str | Path | None = None, *, parts: str | Iterable[str] | None = None,
                     progress: bool = True, keep_archives: bool = False, force: bool = False) -> Path:
    """Download and extract dataset ``name`` under the data root; return its folder (``<root>/<name>``).

    Idempotent: parts already extracted (marker present, recorded files intact) are skipped, so a second
    call downloads and extracts nothing. A part without a marker whose folders are already there and not
    empty (a dataset unzipped by hand) is kept as it is and marked, with a note on stderr; ``force=True``
    fetches it anyway. See the module docstring for sources, resume and safety.

    Args:
        name: ``"nights"``, ``"bapps"`` or ``"things"``.
        root: data root; default :func:`data_root` (``$PERCEPBENCH_DATA``, else the per-user cache).
        parts: part or group names (see :data:`DATASETS`; a string may be ``"jnd,twoafc_train"``);
            default the dataset's ``default_parts``. NIGHTS: ``csv``, ``ref``, ``distort``, ``chunks``,
            single chunks ``ref/007``, or ``zip`` (the single nights.zip). BAPPS: ``jnd``, ``twoafc_val``,
            ``twoafc_train``, ``all``.
        progress: show download progress bars.
        keep_archives: keep the downloaded archives (with their ``.sha256``) in ``<folder>/.percepbench/
            downloads`` after extraction; by default they are deleted once extracted.
        force: fetch and extract the selected parts again even when their markers say they are done
            (for files damaged in place; an archive kept with ``keep_archives`` is re-verified and reused).

    Raises:
        UsageError: unknown dataset or part name.
        OfflineError: offline mode is on (or the network failed after retries) and some archive is
            needed: lists every such archive with its URL, the path to place it at and where it goes.
        ManualDownloadError: THINGS is not complete (it is never fetched automatically): says exactly
            what to fetch and where to put it.
        DataError: an archive is corrupt, truncated or unsafe (it is deleted; the next call downloads it
            again), or does not hold the expected folders; an HTTP error such as 404.
    """
    source = get_source(name)
    root_path = data_root(root)
    dest = root_path / source.folder
    if source.manual:
        selected_names = [p.name for p in select_parts(source, parts)]
        problems = verify_dataset(source.name, root_path, parts=selected_names)
        if not problems:
            return dest
        raise ManualDownloadError(
            source.manual.format(dest=dest, root=root_path, verify=download_command(source.name, root_path,
                                                                                    action="verify"))
            + "\nMissing now: " + "; ".join(problems[:_MAX_LISTED])
            + (f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""))
    selected = select_parts(source, parts)
    if force:
        for p in selected:  # forget "done" first, so an interrupted forced run is redone next time
            _marker(dest, p).unlink(missing_ok=True)
    todo = [p for p in selected if not _is_done(dest, p)]
    if not force:
        adopted = [p for p in todo if _placed_by_hand(dest, p)]
        for p in adopted:  # keep data the user unzipped by hand; `verify` checks it, --force re-fetches it
            _write_marker(dest, p, source.url(p), None, _files_under(dest, p.produces), adopted=True)
        if adopted:
            shown = ", ".join(p.name for p in adopted[:5]) + (f" and {len(adopted) - 5} more" if len(adopted) > 5 else "")
            print(f"{source.title}: {len(adopted)} part(s) already in place ({shown}), kept as they are; "
                  f"check them with `{download_command(source.name, root_path, action='verify')}`, or pass "
                  "--force to fetch them again", file=sys.stderr)
        todo = [p for p in todo if p not in adopted]
    if not todo:
        return dest
    what = f"{source.title} file(s)"

    def needs_network(p: Part) -> bool:
        return p.kind == "zip_member" or not (_state(dest) / "downloads" / p.filename).is_file()

    def missing_now() -> list[MissingFile]:
        return [_missing_entry(source, p, dest) for p in todo if not _is_done(dest, p) and needs_network(p)]

    if is_offline() and any(needs_network(p) for p in todo):
        raise offline_error(missing_now(), offline_reason(), what=what)
    for part in todo:
        try:
            _fetch_part(source, part, dest, root_path, progress=progress, keep_archives=keep_archives)
        except OfflineError as exc:  # the network failed: list everything still missing, not just this part
            raise offline_error(missing_now(), exc.reason, what=what) from exc
    return dest


def _missing_entry(source: DatasetSource, part: Part, dest: Path) -> MissingFile:
    url = source.url(part)
    if part.kind == "zip_member":
        target = dest / part.produces[0]
        return MissingFile(target, url, f"only the member {part.member} of this zip is needed: percepbench reads "
                                        f"it with HTTP range requests; by hand, extract {part.member} from the "
                                        f"zip and place it at {target}")
    archive = _state(dest) / "downloads" / part.filename
    into = ", ".join(str(dest / rel) for rel in part.produces)
    return MissingFile(archive, url, f"{source.title} part {part.name}"
                                     + (f", {part.approx}" if part.approx else "")
                                     + f": percepbench extracts it on the next run into {into}")


def _fetch_part(source: DatasetSource, part: Part, dest: Path, root: Path, *, progress: bool,
                keep_archives: bool) -> None:
    url = source.url(part)
    state = _state(dest)
    work = state / f"staging-{part.marker_name[:-5]}"
    shutil.rmtree(work, ignore_errors=True)  # left over by an interrupted run
    fix = download_command(source.name, root, None if part.name in source.default_parts else [part.name])
    archive: Path | None = None
    digest: str | None = None
    try:
        content = work / "content"
        if part.kind == "zip_member":
            assert part.member is not None
            out = content.joinpath(*PurePosixPath(part.member).parts)
            digest = _fetch_zip_member(url, part.member, out, final=dest / part.produces[0], progress=progress,
                                       what=f"{source.title} {part.produces[0]}")
        else:
            archive = state / "downloads" / part.filename
            try:
                download(url, archive, sha256=part.sha256, size=part.size, progress=progress)
            except OfflineError:  # a WeightsError too, but download_dataset lists every missing file
                raise
            except WeightsError as exc:
                raise DataError(f"{source.title} part {part.name}: {exc}") from exc
            digest = recorded_sha256(archive)
            extract = extract_tar if part.kind == "tar" else extract_zip
            try:
                extract(archive, content)
            except WeightsError as exc:
                for f in (archive, sha256_sidecar(archive)):
                    f.unlink(missing_ok=True)
                raise DataError(f"{source.title} part {part.name}: {exc}. The archive {archive} (from {url}) "
                                f"was deleted and nothing of it installed; run `{fix}` to download it again"
                                ) from exc
        moves = []
        for rel in part.produces:
            found = _locate(content, rel, source.strip_prefixes, flat=part.flat)
            if found is None:
                top = sorted(p.name for p in content.iterdir()) if content.is_dir() else []
                raise DataError(
                    f"{source.title} part {part.name}: the archive from {url} does not contain {rel!r} "
                    f"(looked for it with and without leading folders; the archive's top level holds "
                    f"{', '.join(top[:_MAX_LISTED]) or 'nothing'}); its layout is not the expected one, so "
                    f"nothing was installed. Extract it by hand so that {dest / rel} exists")
            moves.append((found, dest / rel))
        trash = work / "old"
        trash.mkdir(parents=True, exist_ok=True)
        for i, (src, dst) in enumerate(moves):
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink() or dst.exists():
                os.replace(dst, trash / str(i))
            os.replace(src, dst)
        _write_marker(dest, part, url, digest, _files_under(dest, part.produces))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if archive is not None and not keep_archives:
        for f in (archive, sha256_sidecar(archive)):
            f.unlink(missing_ok=True)


def _locate(content: Path, rel: str, prefixes: tuple[str, ...], *, flat: bool) -> Path | None:
    """Where ``rel`` (a path under the dataset folder) is inside an extracted archive.

    Tried in order: ``rel`` itself under the top or under each of ``prefixes``, then with its leading
    components dropped one by one (an archive of ``ref/000.zip`` may hold ``000/...`` or
    ``ref/000/...`` or ``nights/ref/000/...``); with ``flat``, finally the top of the archive itself.
    """
    parts = PurePosixPath(rel).parts
    want_file = bool(PurePosixPath(rel).suffix)
    for k in range(len(parts)):
        for prefix in ("", *prefixes):
            cand = content.joinpath(*PurePosixPath(prefix).parts, *parts[k:])
            if (cand.is_file() if want_file else cand.is_dir()) and not cand.is_symlink():
                return cand
    if flat and not want_file and content.is_dir() and any(p.is_file() for p in content.iterdir()):
        return content
    return None


# ------------------------------------------------------------------------------------- one member of a zip


class _ShortRead(Exception):
    """The server closed the connection before sending the bytes asked for."""


_NET_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError,
               _ShortRead)
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file through HTTP ``Range: bytes=N-`` requests.

    Each read asks for the bytes from the current position on and closes the connection once it has
    what it needs (open-ended ranges work with every server that supports ranges). Network errors are
    retried, resuming where the read stopped; used through an ``io.BufferedReader`` so that zipfile's
    small reads do not each cost a request.
    """

    def __init__(self, url: str, *, timeout: float = 60.0, retries: int = 3) -> None:
        super().__init__()
        self.url, self.timeout, self.retries = url, timeout, retries
        self.pos = 0
        self.size = self._retry(self._probe)

    def _open(self, offset: int) -> Any:
        request = urllib.request.Request(url=self.url, headers={
            "User-Agent": _USER_AGENT, "Accept-Encoding": "identity", "Range": f"bytes={offset}-"})
        return urllib.request.urlopen(request, timeout=self.timeout)

    def _probe(self) -> int:
        with self._open(0) as response:
            total = _content_range_total(response)
            if response.status != 206 or total is None:
                raise DataError(f"{self.url} does not support HTTP range requests (it answered "
                                f"{response.status} without a usable Content-Range), so one member cannot be "
                                "read out of it")
            return total

    def _retry(self, fn: Callable[[], Any]) -> Any:
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code not in _RETRY_STATUS:
                    raise DataError(f"cannot read {self.url}: HTTP {exc.code} {exc.reason}") from exc
                last = exc
            except _NET_ERRORS as exc:
                last = exc
            if attempt < self.retries:
                time.sleep(min(_dl._RETRY_WAIT_S * 2**attempt, _dl._RETRY_WAIT_MAX_S))
        detail = f"{type(last).__name__}: {getattr(last, 'reason', None) or last}"
        raise OfflineError(f"cannot read {self.url}: {detail}", files=[],
                           reason=f"the network failed after {self.retries + 1} attempt(s) ({detail})") from last

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.size - self.pos))
        got = 0

        def fill() -> None:
            nonlocal got
            with self._open(self.pos + got) as response:
                if response.status != 206:
                    raise DataError(f"{self.url} stopped honouring HTTP range requests (it answered "
                                    f"{response.status})")
                while got < want:
                    chunk = response.read(want - got)
                    if not chunk:
                        raise _ShortRead(f"connection closed after {got} of {want} bytes")
                    view[got:got + len(chunk)] = chunk
                    got += len(chunk)

        if want:
            self._retry(fill)
        self.pos += got
        return got


def _content_range_total(response: Any) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+\d+-\d+/(\d+)\s*", response.headers.get("Content-Range") or "")
    return int(m.group(1)) if m else None


def _fetch_zip_member(url: str, member: str, out: Path, *, final: Path, progress: bool, what: str) -> str:
    """Copy ``member`` of the remote zip at ``url`` to ``out`` (CRC-checked); return its sha256."""
    import hashlib

    from tqdm.auto import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    try:
        with io.BufferedReader(_RangeFile(url), buffer_size=_RANGE_BUFFER) as fh, zipfile.ZipFile(fh) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                base = PurePosixPath(member).name
                close = [n for n in zf.namelist() if PurePosixPath(n).name == base][:_MAX_LISTED]
                raise DataError(f"{url} has no member {member!r}"
                                + (f" (members with that name: {', '.join(close)})" if close else "")) from None
            with zf.open(info) as src, open(out, "wb") as dst, tqdm(
                    desc=f"{what} (from {PurePosixPath(url).name})", total=info.file_size, unit="B",
                    unit_scale=True, unit_divisor=1024, disable=not progress, dynamic_ncols=True) as bar:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise DataError(f"cannot read {member} out of {url}: {exc} (the remote file is not a readable zip)") from exc
    except OfflineError as exc:
        raise OfflineError(str(exc), files=[(final, url)], reason=exc.reason) from exc
    except DataError as exc:
        raise DataError(f"{exc}. By hand: download {url}, extract {member} from it and place it at {final}"
                        ) from exc
    return h.hexdigest()


# -------------------------------------------------------------------------------------------------- verify


def verify_dataset(name: str, root: str | Path | None = None, *, parts: str | Iterable[str] | None = None,
                   deep: bool = False) -> list[str]:
    """Check dataset ``name`` under the data root; return the problems found (empty: all good).

    Every missing folder or file is named (a whole missing folder once, not each file in it), and each
    problem ends with the fix: the exact ``percepbench data download ...`` command (for THINGS, where to
    fetch the files by hand). ``deep=True`` also opens every image with PIL (full decode) and reads every
    label ``.npy``; the CSV / triplet file is always read.

    - nights: ``data.csv`` present with the official columns and numeric ``votes``/``right_vote``; every
      ``ref_path``/``left_path``/``right_path`` of the rows with ``votes >= 6`` exists.
    - bapps: for each selected part (default jnd + twoafc_val), every subset folder exists and the stems
      of ref/p0/p1/judge (2afc) or p0/p1/same (jnd) match.
    - things: ``things_valset.txt`` present with three names a line, and every image it names exists.

    Raises:
        UsageError: unknown dataset or part name.
    """
    source = get_source(name)
    root_path = data_root(root)
    selected = select_parts(source, parts)
    checker = {"nights": _verify_nights, "bapps": _verify_bapps, "things": _verify_things}[source.name]
    return checker(source, root_path, selected, deep)


def _fix(source: DatasetSource, root: Path, part_names: Sequence[str] | None = None, *,
         delete: Path | None = None) -> str:
    """``Fix: run `<download command>``` (first ``delete <file>`` for a damaged file: a file missing from a
    part makes the next download fetch that part again, whereas a damaged one of the same size would not)."""
    extra = [p for p in (part_names or ()) if p not in source.default_parts]
    command = download_command(source.name, root, extra or None)
    if delete is not None:
        return f"Fix: delete {delete}, then run `{command}`"
    return f"Fix: run `{command}`"


def _missing_grouped(base: Path, rels: Sequence[str], fix: str, what: str) -> list[str]:
    """One problem per missing folder (when the folder holding the file is gone), else per missing file."""
    problems: list[str] = []
    folders: dict[str, int] = {}
    for rel in rels:
        parent = str(PurePosixPath(rel).parent)
        if parent not in (".", "") and not (base / parent).is_dir():
            folders[parent] = folders.get(parent, 0) + 1
        else:
            problems.append(f"{base / rel}: {what} missing. {fix}")
    grouped = [f"{base / folder}: folder missing ({n} referenced {what}(s) in it). {fix}"
               for folder, n in sorted(folders.items())]
    return grouped + problems


def _unreadable_images(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    from PIL import Image

    def check(path: Path) -> tuple[Path, str] | None:
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as exc:  # any decoder failure is a problem to report, not a crash
            return path, f"{type(exc).__name__}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [r for r in pool.map(check, paths) if r is not None]


def _verify_nights(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    from percepbench.tasks.files import numeric_column, read_csv
    from percepbench.tasks.nights import COLUMNS, MIN_VOTES

    dest = root / source.folder
    fix = _fix(source, root)
    if not dest.is_dir():
        return [f"{dest}: NIGHTS folder missing. {fix}"]
    csv = dest / "data.csv"
    if not csv.is_file():
        return [f"{csv}: NIGHTS data.csv missing. {fix} (it reads nights/data.csv out of nights.zip)"]
    try:
        frame = read_csv(csv, COLUMNS)
        votes = numeric_column(frame, "votes", csv)
        numeric_column(frame, "right_vote", csv, lo=0.0, hi=1.0)
    except DataError as exc:
        return [f"{exc}. {_fix(source, root, delete=csv)}"]
    kept = frame[(votes >= MIN_VOTES).to_numpy()]
    rels = list(dict.fromkeys(str(p) for col in ("ref_path", "left_path", "right_path") for p in kept[col]))
    missing = [r for r in rels if not (dest / r).is_file()]
    problems = _missing_grouped(dest, missing, fix, "image")
    if deep:
        present = [dest / r for r in rels if r not in set(missing)]
        problems += [f"{p}: image cannot be read ({why}). {_fix(source, root, delete=p)}"
                     for p, why in _unreadable_images(present)]
    return problems


def _stem_map(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path] | None:
    if not folder.is_dir():
        return None
    return {f.stem: f for f in folder.iterdir() if f.suffix.lower() in suffixes and f.is_file()}


def _verify_bapps(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    from percepbench.tasks.bapps import IMAGE_SUFFIXES, SUBSETS

    dest = root / source.folder
    problems: list[str] = []
    layouts = {
        "jnd": ("dataset/jnd/val", ("traditional", "cnn"), ("p0", "p1"), "same"),
        "twoafc_val": ("dataset/2afc/val", SUBSETS["val"], ("ref", "p0", "p1"), "judge"),
        "twoafc_train": ("dataset/2afc/train", SUBSETS["train"], ("ref", "p0", "p1"), "judge"),
    }
    for part in selected:
        base_rel, subsets, image_folders, label_folder = layouts[part.name]
        fix = _fix(source, root, [part.name])
        base = dest / base_rel
        if not base.is_dir():
            problems.append(f"{base}: BAPPS {part.name} folder missing. {fix}")
            continue
        for subset in subsets:
            folder = base / subset
            if not folder.is_dir():
                problems.append(f"{folder}: BAPPS {part.name} subset folder missing. {fix}")
                continue
            found: dict[str, dict[str, Path]] = {}
            for sub in (*image_folders, label_folder):
                stems = _stem_map(folder / sub, (".npy",) if sub == label_folder else IMAGE_SUFFIXES)
                if stems is None:
                    problems.append(f"{folder / sub}: folder missing. {fix}")
                else:
                    found[sub] = stems
            if len(found) < len(image_folders) + 1:
                continue
            every = set().union(*(s.keys() for s in found.values()))
            if not every:
                problems.append(f"{folder}: no files in {', '.join(found)}. {fix}")
            for sub, stems in found.items():
                lacking = sorted(every - stems.keys())
                if lacking:
                    shown = ", ".join(lacking[:_MAX_LISTED]) + (f" (and {len(lacking) - _MAX_LISTED} more)"
                                                                 if len(lacking) > _MAX_LISTED else "")
                    ext = ".npy" if sub == label_folder else ".png"
                    problems.append(f"{folder / sub}: {len(lacking)} file(s) missing that the other folders "
                                    f"have (stems {shown}; e.g. {folder / sub / (lacking[0] + ext)}). {fix}")
            if deep:
                images = [p for sub in image_folders for p in found[sub].values()]
                problems += [f"{p}: image cannot be read ({why}). {_fix(source, root, [part.name], delete=p)}"
                             for p, why in _unreadable_images(images)]
                problems += [f"{why}. {_fix(source, root, [part.name], delete=p)}" for p in found[label_folder].values()
                             if (why := _label_problem(p, label_folder))]
    return problems


def _label_problem(path: Path, what: str) -> str:
    """Why a BAPPS label file (``judge``/``same`` ``.npy``: one number in [0, 1]) is bad, or ``""``."""
    import numpy as np

    try:
        value = np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        return f"{path}: cannot read {what} file ({exc})"
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        return f"{path}: {what} file must hold one number (shape (1,)), got dtype {value.dtype} shape {value.shape}"
    v = float(value.reshape(-1)[0])
    if not 0.0 <= v <= 1.0:
        return f"{path}: {what} value {v} is outside [0, 1]"
    return ""


def _verify_things(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    dest = root / source.folder
    fix = ("Fix: fetch it by hand as `" + download_command(source.name, root)
           + "` explains (percepbench cannot download THINGS)")
    triplets = dest / "things_valset.txt"
    if not triplets.is_file():
        return [f"{triplets}: THINGS triplet file missing (things_valset.txt, OSF project b2a4j). {fix}"]
    names: list[str] = []
    bad: list[str] = []
    try:
        text = triplets.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{triplets}: cannot be read ({exc}). {fix}"]
    for lineno, line in enumerate(text.splitlines(), start=1):
        row = [n for n in re.split(r"[\s,]+", line.strip()) if n]
        if not row:
            continue
        if len(row) != 3:
            bad.append(f"line {lineno} ({len(row)} names)")
        names.extend(row)
    problems = []
    if bad:
        problems.append(f"{triplets}: every line must hold exactly 3 image names; bad: {', '.join(bad[:_MAX_LISTED])}"
                        + (f" (and {len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else "") + f". {fix}")
    if not names:
        problems.append(f"{triplets}: no triplets in it. {fix}")
    if any(p.name == "images" for p in selected):
        rels = list(dict.fromkeys(n if PurePosixPath(n).suffix else f"{n}.png" for n in names))
        missing = [r for r in rels if not (dest / r).is_file()]
        problems += _missing_grouped(dest, missing, fix, "image")
        if deep:
            present = [dest / r for r in rels if r not in set(missing)]
            problems += [f"{p}: image cannot be read ({why}). {fix}" for p, why in _unreadable_images(present)]
    return problems

