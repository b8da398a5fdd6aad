"""percepbench.data: dataset download and verify against tiny datasets in the official layouts, served by a
local HTTP server on 127.0.0.1 (tests/local_http.py), packed like the official archives."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from percepbench.data import (
    ManualDownloadError,
    data_root,
    download_command,
    download_dataset,
    get_source,
    trust_notes,
    verify_dataset,
)
from percepbench.errors import DataError, DiskFullError, OfflineError, UsageError
from percepbench.registry import DATASETS
from percepbench.tasks.nights import nights_source

from conftest import PYTHON, REPO
from layouts import (
    BappsTriplet,
    JNDPair,
    NightsTriplet,
    bapps_2afc_files,
    bapps_jnd_files,
    npy_bytes,
    png_bytes,
    tar_bytes,
)
from layouts import nights_files as layout_nights_files

pytestmark = pytest.mark.usefixtures("weights_env")


@pytest.fixture(autouse=True)
def no_user_data(monkeypatch, tmp_path):
    """Neither $PERCEPBENCH_DATA nor the user's cache folder is ever used: the default root is private."""
    monkeypatch.delenv("PERCEPBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in DATASETS.names():
        monkeypatch.delenv(f"PERCEPBENCH_DATA_URL_{name.upper()}", raising=False)


def png(value: int) -> bytes:
    return png_bytes(value, 8)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def tar_gz_bytes(members: dict[str, bytes]) -> bytes:
    return tar_bytes(members, "w:gz")


def serve(server, rel: str, content: bytes) -> None:
    path = server.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def requested(server) -> list[str]:
    return [r["path"] for r in server.requests]


@pytest.fixture
def small_nights():
    """Replace the registered NIGHTS source by one with ``chunks`` chunk zips per kind, for one test."""
    original = DATASETS.get("nights")

    def use(chunks: int) -> None:
        DATASETS.unregister("nights")
        DATASETS.register(nights_source(chunks=chunks))

    yield use
    DATASETS.unregister("nights")
    DATASETS.register(original)


# ------------------------------------------------------------------------------------------------ NIGHTS


def nights_files() -> dict[str, bytes]:
    """A NIGHTS tree (paths relative to the nights folder): 8 triplets in chunks 000 and 001, data.csv."""
    return layout_nights_files(
        [NightsTriplet(id=i, ref=100, left=100 + 10 * (i % 3), right=100 + 5 * (i % 4), right_vote=1.0,
                       votes=5 if i == 7 else 6, is_imagenet=i % 2 == 0,
                       missing=("right",) if i == 7 else ())  # row 7: filtered out, its right image absent
         for i in range(8)], per_chunk=4)


def chunk(files: dict[str, bytes], kind: str, number: str, style: str) -> bytes:
    """The chunk zip ``nights_chunked/<kind>/<number>.zip`` in one of the layouts extraction accepts."""
    prefix = {"official": f"{number}/", "kind": f"{kind}/{number}/", "nights": f"nights/{kind}/{number}/",
              "flat": ""}[style]
    members = {prefix + rel.split("/", 2)[2]: content for rel, content in files.items()
               if rel.startswith(f"{kind}/{number}/")}
    return zip_bytes(members)


@pytest.fixture
def nights_server(server, monkeypatch, small_nights):
    """NIGHTS with 2 chunks per kind, served like data.csail.mit.edu/nights/: chunk zips and nights.zip."""
    small_nights(2)
    monkeypatch.setenv("PERCEPBENCH_DATA_URL_NIGHTS", server.base + "/")
    files = nights_files()
    styles = {("ref", "000"): "official", ("ref", "001"): "kind", ("distort", "000"): "nights",
              ("distort", "001"): "flat"}
    for (kind, number), style in styles.items():
        serve(server, f"nights_chunked/{kind}/{number}.zip", chunk(files, kind, number, style))
    serve(server, "nights.zip", zip_bytes({f"nights/{rel}": content for rel, content in files.items()}))
    server.files = files
    return server


def prepared_nights(root: Path | None):
    from percepbench.tasks.nights import NIGHTS

    task = NIGHTS()
    task.prepare(data_root=None if root is None else str(root), progress=False)
    return task


def test_official_sources_and_parts():
    nights = get_source("nights")
    urls = {p.name: nights.url(p) for p in nights.parts}
    assert urls["ref/000"] == "https://data.csail.mit.edu/nights/nights_chunked/ref/000.zip"
    assert urls["distort/099"] == "https://data.csail.mit.edu/nights/nights_chunked/distort/099.zip"
    assert urls["csv"] == urls["zip"] == "https://data.csail.mit.edu/nights/nights.zip"
    assert nights.part("csv").member == "nights/data.csv"
    default = nights.select(None)
    assert len(default) == 201 and default[0].name == "csv" and "zip" not in {p.name for p in default}
    assert [p.name for p in nights.select("zip")] == ["zip"]
    assert [p.name for p in nights.select(["csv", "ref/007"])] == ["csv", "ref/007"]
    bapps = get_source("bapps")
    assert [bapps.url(p) for p in bapps.parts] == [
        f"https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/{n}.tar.gz"
        for n in ("jnd", "twoafc_val", "twoafc_train")]
    assert [p.name for p in bapps.select(None)] == ["jnd", "twoafc_val"]
    assert [p.name for p in bapps.select("twoafc_train")] == ["twoafc_train"]
    for source in DATASETS.specs():
        assert source.description and source.licence and source.citation and source.approx_size and source.layout
    assert get_source("things").manual and "b2a4j" in get_source("things").manual


def test_data_root_and_command(monkeypatch, tmp_path):
    assert data_root() == tmp_path / "xdg" / "percepbench" / "data"
    monkeypatch.setenv("PERCEPBENCH_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert download_command("bapps", "/my data", ["twoafc_train"]) == (
        "percepbench data download bapps --root '/my data' --parts twoafc_train")


def test_unknown_names_are_usage_errors():
    with pytest.raises(UsageError, match="did you mean 'nights'"):
        download_dataset("nigths", progress=False)
    with pytest.raises(UsageError, match="did you mean 'bapps'"):
        verify_dataset("bap")
    with pytest.raises(UsageError, match="unknown bapps part 'twoafc_tran'; did you mean 'twoafc_train'"):
        download_dataset("bapps", parts="twoafc_tran", progress=False)


def test_nights_download_is_read_by_the_task_and_idempotent(nights_server, tmp_path):
    # no root anywhere: the download and the task both use the default data root
    dest = download_dataset("nights", progress=False)
    assert dest == tmp_path / "xdg" / "percepbench" / "data" / "nights"
    on_disk = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()
               and ".percepbench" not in p.parts}
    assert on_disk == set(nights_server.files)  # every chunk style landed in ref/NNN, distort/NNN
    assert (dest / "data.csv").read_bytes() == nights_server.files["data.csv"]
    # data.csv came out of nights.zip with range requests only, not as a whole-archive download
    zip_requests = [r for r in nights_server.requests if r["path"] == "/nights.zip"]
    assert zip_requests and all(r["range"] for r in zip_requests)
    task = prepared_nights(None)
    assert len(task.items) == 7 and set(task.items["subset"]) == {"test_imagenet", "test_no_imagenet"}
    state = dest / ".percepbench"
    assert sorted(p.name for p in (state / "done").iterdir()) == [
        "csv.json", "distort-000.json", "distort-001.json", "ref-000.json", "ref-001.json"]
    marker = json.loads((state / "done" / "ref-001.json").read_text())
    assert marker["url"].endswith("/nights_chunked/ref/001.zip") and len(marker["archive_sha256"]) == 64
    assert sorted(marker["files"]) == ["ref/001/004.png", "ref/001/005.png", "ref/001/006.png", "ref/001/007.png"]
    assert list((state / "downloads").iterdir()) == []  # archives deleted once extracted
    assert not any(p.name.startswith("staging") for p in state.iterdir())
    assert verify_dataset("nights") == []

    before = len(nights_server.requests)
    assert download_dataset("nights", progress=False) == dest
    assert len(nights_server.requests) == before  # nothing downloaded or extracted again

    # a deleted image makes its chunk incomplete: the plain command fetches that chunk again, and only it
    (dest / "distort/001/005_1.png").unlink()
    download_dataset("nights", progress=False)
    assert requested(nights_server)[before:] == ["/nights_chunked/distort/001.zip"]
    assert (dest / "distort/001/005_1.png").is_file()


def test_nights_same_root_via_env_and_flag(nights_server, tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    download_dataset("nights", root, parts="csv,chunks", progress=False, keep_archives=True)
    assert prepared_nights(root).items["item"].tolist() == [str(i) for i in range(7)]
    monkeypatch.setenv("PERCEPBENCH_DATA", str(root))
    assert len(prepared_nights(None).items) == 7
    kept = sorted(p.name for p in (root / "nights" / ".percepbench" / "downloads").iterdir())
    assert "nights_chunked-ref-000.zip" in kept and "nights_chunked-ref-000.zip.sha256" in kept


def test_nights_single_zip_option(nights_server, tmp_path):
    root = tmp_path / "d"
    download_dataset("nights", root, parts="zip", progress=False)
    assert requested(nights_server) == ["/nights.zip"] and nights_server.requests[0]["range"] is None
    assert len(prepared_nights(root).items) == 7
    assert not (root / "nights" / ".percepbench" / "downloads" / "nights.zip").exists()


def test_nights_csv_needs_range_support(nights_server, tmp_path):
    nights_server.ignore_range = True
    with pytest.raises(DataError, match="does not support HTTP range requests") as info:
        download_dataset("nights", tmp_path / "d", parts="csv", progress=False)
    msg = str(info.value)
    assert "nights/data.csv" in msg and str(tmp_path / "d" / "nights" / "data.csv") in msg
    assert not (tmp_path / "d" / "nights" / "data.csv").exists()


def test_chunk_with_unexpected_layout_installs_nothing(nights_server, tmp_path):
    serve(nights_server, "nights_chunked/ref/000.zip", zip_bytes({"something/else/000.png": png(1)}))
    with pytest.raises(DataError, match=r"does not contain 'ref/000'.*something") as info:
        download_dataset("nights", tmp_path / "d", parts="ref/000", progress=False)
    assert str(tmp_path / "d" / "nights" / "ref" / "000") in str(info.value)
    assert not (tmp_path / "d" / "nights" / "ref").exists()
    assert not (tmp_path / "d" / "nights" / ".percepbench" / "done" / "ref-000.json").exists()


def test_nights_verify_names_missing_files_and_folders(nights_server, tmp_path):
    root = tmp_path / "d"
    download_dataset("nights", root, progress=False)
    dest = root / "nights"
    (dest / "ref/000/002.png").unlink()
    for f in (dest / "distort/001").iterdir():
        f.unlink()
    (dest / "distort/001").rmdir()
    (dest / "distort/000/001_0.png").write_bytes(b"not a png")
    problems = verify_dataset("nights", root)
    fix = f"Fix: run `percepbench data download nights --root {root}`"
    assert problems == [f"{dest / 'distort/001'}: folder missing (6 referenced image(s) in it). {fix}",
                        f"{dest / 'ref/000/002.png'}: image missing. {fix}"]
    deep = verify_dataset("nights", root, deep=True)
    assert deep[:2] == problems and len(deep) == 3
    damaged = dest / "distort/000/001_0.png"
    assert deep[2].startswith(f"{damaged}: image cannot be read")
    assert deep[2].endswith(f"Fix: delete {damaged}, then run `percepbench data download nights --root {root}`")
    download_dataset("nights", root, progress=False)  # the fixes work: chunks with files missing or resized
    # (the damaged file is shorter) are fetched again
    assert verify_dataset("nights", root, deep=True) == []

    csv = dest / "data.csv"
    csv.write_text(csv.read_text().replace("right_vote", "rightvote"))
    (problem,) = verify_dataset("nights", root)
    assert str(csv) in problem and "missing column(s) right_vote" in problem and problem.endswith(
        f"`percepbench data download nights --root {root}`")


def test_nights_missing_everything(tmp_path):
    root = tmp_path / "empty"
    assert verify_dataset("nights", root) == [
        f"{root / 'nights'}: NIGHTS folder missing. Fix: run `percepbench data download nights --root {root}`"]


# ------------------------------------------------------------------------------------------------- BAPPS


BAPPS_VAL = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")


def bapps_members(part: str) -> dict[str, bytes]:
    """The members of the official archive ``part``.tar.gz: dataset/2afc/val/... or dataset/jnd/val/..."""
    stems = ("000000", "000001")
    if part == "jnd":
        return bapps_jnd_files({subset: [JNDPair(stem, p0=50, p1=60 + i, same=0.5) for i, stem in enumerate(stems)]
                                for subset in ("traditional", "cnn")}, size=8)
    split = part.removeprefix("twoafc_")
    return bapps_2afc_files(
        {subset: [BappsTriplet(stem, ref=120, p0=130 + i, p1=150 - i, judge=0.25 * (i + 1))
                  for i, stem in enumerate(stems)]
         for subset in (BAPPS_VAL if split == "val" else ("traditional", "cnn", "mix"))}, split=split, size=8)


@pytest.fixture
def bapps_server(server, monkeypatch):
    monkeypatch.setenv("PERCEPBENCH_DATA_URL_BAPPS", server.base)
    for part in ("jnd", "twoafc_val", "twoafc_train"):
        serve(server, f"{part}.tar.gz", tar_gz_bytes(bapps_members(part)))
    return server


def test_bapps_download_is_read_by_the_task(bapps_server, tmp_path):
    from percepbench.tasks.bapps import BAPPS2AFC

    root = tmp_path / "d"
    dest = download_dataset("bapps", root, progress=False)
    assert requested(bapps_server) == ["/jnd.tar.gz", "/twoafc_val.tar.gz"]  # train only on request
    assert (dest / "dataset/jnd/val/cnn/same/000001.npy").is_file()
    task = BAPPS2AFC()
    task.prepare(data_root=str(root), progress=False)
    assert len(task.items) == 12 and task.items["p"].tolist()[:2] == [0.25, 0.5]
    assert verify_dataset("bapps", root, deep=True) == []
    served = {p: hashlib.sha256((bapps_server.root / f"{p}.tar.gz").read_bytes()).hexdigest()
              for p in ("jnd", "twoafc_val")}
    assert trust_notes("bapps", root) == [  # the hosts publish no checksums: say so
        f"{p}: archive sha256 {served[p]} recorded on first use, never checked against a published value"
        for p in ("jnd", "twoafc_val")]
    assert trust_notes("bapps", root, parts="twoafc_train") == []  # not downloaded
    assert verify_dataset("bapps", root, parts="twoafc_train") == [
        f"{dest / 'dataset/2afc/train'}: BAPPS twoafc_train folder missing. Fix: run "
        f"`percepbench data download bapps --root {root} --parts twoafc_train`"]
    download_dataset("bapps", root, progress=False)
    assert len(bapps_server.requests) == 2
    download_dataset("bapps", root, parts="twoafc_train", progress=False)
    assert requested(bapps_server)[2:] == ["/twoafc_train.tar.gz"]
    assert (dest / "dataset/2afc/val/cnn").is_dir() and (dest / "dataset/jnd/val").is_dir()  # merged, not replaced
    train = BAPPS2AFC(split="train")
    train.prepare(data_root=str(root), progress=False)
    assert len(train.items) == 6


def test_resume_after_dropped_connection_and_leftover_part(bapps_server, tmp_path):
    root = tmp_path / "d"
    archive = bapps_server.root / "jnd.tar.gz"
    downloads = root / "bapps" / ".percepbench" / "downloads"
    downloads.mkdir(parents=True)
    # a leftover with no record of the response it came from (its ETag) is not resumed: it starts again
    (downloads / "jnd.tar.gz.part").write_bytes(archive.read_bytes()[:100])
    bapps_server.drop_after = 300  # and the connection drops during this run: that one is resumed
    download_dataset("bapps", root, parts="jnd", progress=False)
    assert [r["range"] for r in bapps_server.requests] == [None, "bytes=300-"]
    assert verify_dataset("bapps", root, parts="jnd") == []


def test_symlink_chain_from_issue_12_is_refused_through_the_cli(bapps_server, tmp_path, capsys):
    """``p/q -> ..`` then ``p/q/.../dataset -> <victim>``: installing the part must not move the victim's
    ``jnd`` folder into the data root."""
    from percepbench.cli import main

    victim = tmp_path / "victim"
    (victim / "jnd" / "val").mkdir(parents=True)
    (victim / "jnd" / "val" / "keep.txt").write_bytes(b"mine")
    root = tmp_path / "d"
    # installed from <root>/bapps/.percepbench/staging-jnd/content/: five levels below tmp_path
    chain = "/".join(["p/q"] * 10)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, target in (("p/q", ".."), (f"{chain}/dataset", "../" * 5 + "victim")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    serve(bapps_server, "jnd.tar.gz", buf.getvalue())
    assert main(["data", "download", "bapps", "--parts", "jnd", "--root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "BAPPS part jnd" in err and "'p/q' is a link to '..'" in err and "refusing to extract it" in err
    assert sorted(p.relative_to(victim).as_posix() for p in victim.rglob("*")) == ["jnd", "jnd/val",
                                                                                  "jnd/val/keep.txt"]
    assert not (root / "bapps" / "dataset").exists()
    assert not (root / "bapps" / ".percepbench" / "done" / "jnd.json").exists()


def test_data_verify_says_what_each_archive_was_checked_against(bapps_server, tmp_path, capsys):
    from percepbench.cli import main

    root = tmp_path / "d"
    download_dataset("bapps", root, parts="jnd", progress=False)
    capsys.readouterr()
    assert main(["data", "verify", "bapps", "--parts", "jnd", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256((bapps_server.root / "jnd.tar.gz").read_bytes()).hexdigest()
    assert f"jnd: archive sha256 {digest} recorded on first use, never checked against a published value" in out


def test_locating_a_part_never_follows_a_link(tmp_path):
    """Defence in depth behind the extractors (which leave no links): a staged tree whose path to the part
    goes through a link is not installed from."""
    from percepbench.dataset_parts import locate as _locate

    outside = tmp_path / "outside"
    (outside / "jnd" / "val").mkdir(parents=True)
    (outside / "x.png").write_bytes(b"x")
    content = tmp_path / "content"
    content.mkdir()
    (content / "dataset").symlink_to(outside, target_is_directory=True)
    assert (content / "dataset" / "jnd").is_dir()  # reachable through the link ...
    assert _locate(content, "dataset/jnd", (), flat=False) is None  # ... but not located through it
    assert _locate(content, "dataset/x.png", (), flat=False) is None
    linked = tmp_path / "linked"
    linked.symlink_to(outside / "jnd", target_is_directory=True)
    assert _locate(linked, "dataset/val", (), flat=False) is None
    (content / "dataset").unlink()
    (content / "dataset" / "jnd").mkdir(parents=True)
    assert _locate(content, "dataset/jnd", (), flat=False) == content / "dataset" / "jnd"


def test_full_disk_keeps_the_archive_and_names_the_path(bapps_server, tmp_path, monkeypatch):
    import builtins
    import errno

    from percepbench import download as dl

    root = tmp_path / "d"
    download_dataset("bapps", root, parts="jnd", progress=False, keep_archives=True)
    archive = root / "bapps/.percepbench/downloads/jnd.tar.gz"

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def full_on_write(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (closed by the caller)
        return Full(fh) if any(c in mode for c in "wax") else fh

    monkeypatch.setattr(dl, "open", full_on_write, raising=False)
    with pytest.raises(DiskFullError) as info:
        download_dataset("bapps", root, parts="jnd", progress=False, force=True)
    msg = str(info.value)
    assert msg.startswith("BAPPS part jnd: no space left on the device") and str(root / "bapps") in msg
    assert f"the archive {archive} is kept" in msg and archive.is_file()
    assert requested(bapps_server) == ["/jnd.tar.gz"]


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_truncated_archive_is_an_error_and_leaves_no_marker(bapps_server, nights_server, tmp_path, kind):
    root = tmp_path / "d"
    if kind == "tar":
        name, served, part = "bapps", bapps_server.root / "twoafc_val.tar.gz", "twoafc_val"
        marker = root / "bapps/.percepbench/done/twoafc_val.json"
        archive = root / "bapps/.percepbench/downloads/twoafc_val.tar.gz"
        produced = root / "bapps/dataset/2afc/val"
    else:
        name, served, part = "nights", nights_server.root / "nights_chunked/distort/000.zip", "distort/000"
        marker = root / "nights/.percepbench/done/distort-000.json"
        archive = root / "nights/.percepbench/downloads/nights_chunked-distort-000.zip"
        produced = root / "nights/distort/000"
    good = served.read_bytes()
    served.write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        download_dataset(name, root, parts=part, progress=False)
    msg = str(info.value)
    # a truncated zip is refused when downloaded (its central directory is missing), a tar when extracted
    assert str(archive) in msg and ("removed it" if kind == "zip" else "was deleted") in msg
    assert f"percepbench data download {name} --root {root}" in msg
    assert not marker.exists() and not produced.exists() and not archive.exists()
    assert not [p for p in marker.parent.parent.iterdir() if p.name.startswith("staging")]
    served.write_bytes(good)  # the next call downloads it again and succeeds
    download_dataset(name, root, parts=part, progress=False)
    assert marker.is_file() and produced.is_dir()


@pytest.mark.parametrize("evil", ["dotdot", "absolute", "symlink"])
def test_malicious_tar_is_refused_and_installs_nothing(bapps_server, tmp_path, evil):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        good = tarfile.TarInfo("dataset/jnd/val/cnn/p0/000000.png")
        content = png(1)
        good.size = len(content)
        tf.addfile(good, io.BytesIO(content))
        info = tarfile.TarInfo({"dotdot": "dataset/../../evil", "absolute": "/tmp/evil",
                                "symlink": "dataset/jnd/link"}[evil])
        if evil == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "../../../../outside"
            tf.addfile(info)
        else:
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))
    serve(bapps_server, "jnd.tar.gz", buf.getvalue())
    root = tmp_path / "d"
    with pytest.raises(DataError, match="refusing to extract"):
        download_dataset("bapps", root, parts="jnd", progress=False)
    assert not (root / "bapps" / "dataset").exists()
    assert not (root / "bapps" / ".percepbench" / "done" / "jnd.json").exists()
    assert not (tmp_path / "evil").exists() and not (root / "evil").exists()


def test_bapps_verify_reports_deleted_image_and_bad_npy(bapps_server, tmp_path):
    root = tmp_path / "d"
    dest = download_dataset("bapps", root, progress=False)
    cnn = dest / "dataset/2afc/val/cnn"
    (cnn / "p0/000001.png").unlink()
    (cnn / "judge/000000.npy").write_bytes(b"garbage, not a numpy file")
    (dest / "dataset/jnd/val/traditional/same/000000.npy").write_bytes(npy_bytes([1.5]))
    fix = f"Fix: run `percepbench data download bapps --root {root}`"
    (shallow,) = verify_dataset("bapps", root)
    assert shallow.startswith(f"{cnn / 'p0'}: 1 file(s) missing") and str(cnn / "p0/000001.png") in shallow
    assert shallow.endswith(fix)
    jnd, two, judge = verify_dataset("bapps", root, deep=True)  # parts in order: jnd, then twoafc_val
    assert two == shallow
    bad_judge, bad_same = cnn / "judge/000000.npy", dest / "dataset/jnd/val/traditional/same/000000.npy"
    assert judge.startswith(f"{bad_judge}: cannot read judge file")
    assert judge.endswith(f"Fix: delete {bad_judge}, then run `percepbench data download bapps --root {root}`")
    assert jnd == (f"{bad_same}: same value 1.5 is outside [0, 1]. Fix: delete {bad_same}, then run "
                   f"`percepbench data download bapps --root {root}`")
    bad_same.unlink()  # the fixes work: a part with a file missing is fetched and extracted again
    download_dataset("bapps", root, progress=False)
    assert verify_dataset("bapps", root, deep=True) == []


def test_offline_mode_lists_every_file_url_and_destination(bapps_server, nights_server, tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    root = tmp_path / "d"
    with pytest.raises(OfflineError) as info:
        download_dataset("bapps", root, progress=False)
    msg = str(info.value)
    downloads = root / "bapps/.percepbench/downloads"
    assert info.value.files == [(downloads / "jnd.tar.gz", f"{bapps_server.base}/jnd.tar.gz"),
                                (downloads / "twoafc_val.tar.gz", f"{bapps_server.base}/twoafc_val.tar.gz")]
    assert "cannot download 2 BAPPS file(s)" in msg and "PERCEPBENCH_OFFLINE=1" in msg
    assert str(root / "bapps/dataset/2afc/val") in msg and str(root / "bapps/dataset/jnd") in msg
    with pytest.raises(OfflineError) as info:
        download_dataset("nights", root, progress=False)
    files = info.value.files
    assert len(files) == 5 and files[0] == (root / "nights/data.csv", f"{nights_server.base}/nights.zip")
    assert "nights/data.csv" in str(info.value)
    assert nights_server.requests == []
    # an archive placed by hand needs no network, even offline
    downloads.mkdir(parents=True)
    (downloads / "jnd.tar.gz").write_bytes((bapps_server.root / "jnd.tar.gz").read_bytes())
    download_dataset("bapps", root, parts="jnd", progress=False)
    assert verify_dataset("bapps", root, parts="jnd") == [] and bapps_server.requests == []


def test_network_failure_lists_everything_still_missing(monkeypatch, tmp_path, small_nights):
    from local_http import closed_port_url

    small_nights(1)
    base = closed_port_url("").rstrip("/")
    monkeypatch.setenv("PERCEPBENCH_DATA_URL_NIGHTS", base)
    with pytest.raises(OfflineError) as info:
        download_dataset("nights", tmp_path / "d", progress=False)
    msg = str(info.value)
    assert "network failed after 4 attempt(s)" in msg and "cannot download 3 NIGHTS file(s)" in msg
    assert [url for _, url in info.value.files] == [f"{base}/nights.zip", f"{base}/nights_chunked/ref/000.zip",
                                                    f"{base}/nights_chunked/distort/000.zip"]


# ------------------------------------------------------------------------------------------------ THINGS


def test_things_is_never_downloaded_and_says_what_to_fetch(server, tmp_path):
    root = tmp_path / "d"
    dest = root / "things"
    with pytest.raises(ManualDownloadError) as info:
        download_dataset("things", root, progress=False)
    msg = str(info.value)
    assert "https://osf.io/b2a4j/" in msg and str(dest / "things_valset.txt") in msg and "<name>.png" in msg
    assert f"percepbench data verify things --root {root}" in msg
    dest.mkdir(parents=True)
    (dest / "things_valset.txt").write_text("a b c\nb c d\n")
    for name in "abc":
        (dest / f"{name}.png").write_bytes(png(10))
    with pytest.raises(ManualDownloadError, match=r"d\.png: image missing"):
        download_dataset("things", root, progress=False)
    assert verify_dataset("things", root) == [
        f"{dest / 'd.png'}: image missing. Fix: fetch it by hand as "
        f"`percepbench data download things --root {root}` explains (percepbench cannot download THINGS)"]
    (dest / "d.png").write_bytes(png(20))
    assert download_dataset("things", root, progress=False) == dest
    assert server.requests == []


# ------------------------------------------------------------------------------------------ task messages


def test_task_errors_name_the_download_command(tmp_path):
    from percepbench.tasks.bapps import BAPPS2AFC
    from percepbench.tasks.nights import NIGHTS
    from percepbench.tasks.things import ThingsOddOneOut

    root = tmp_path / "nowhere"
    for task, command in ((NIGHTS(), "nights"), (BAPPS2AFC(), "bapps"), (ThingsOddOneOut(), "things")):
        with pytest.raises(DataError) as info:
            task.prepare(data_root=str(root), progress=False)
        assert f"`percepbench data download {command} --root {root}`" in str(info.value)
        assert "no download command" not in str(info.value)
        with pytest.raises(DataError) as info:
            task.prepare(data_root=None, progress=False)
        default = tmp_path / "xdg" / "percepbench" / "data"
        assert f"no data root given, so the default data root {default} was used" in str(info.value)
        assert f"--root {default}`" in str(info.value)
    with pytest.raises(DataError, match="--parts twoafc_train"):
        BAPPS2AFC(split="train").prepare(data_root=str(root), progress=False)


def test_data_unzipped_by_hand_is_kept(bapps_server, tmp_path, capsys):
    """A tree placed by hand (no markers) is kept and marked, not fetched again; --force still fetches it."""
    root = tmp_path / "d"
    for rel, content in bapps_members("jnd").items():
        path = root / "bapps" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    download_dataset("bapps", root, parts="jnd", progress=False)
    assert requested(bapps_server) == []
    err = capsys.readouterr().err
    assert "1 part(s) already in place (jnd)" in err and "percepbench data verify bapps" in err
    assert verify_dataset("bapps", root, parts="jnd", deep=True) == []
    marker = json.loads(next((root / "bapps" / ".percepbench" / "done").glob("jnd*.json")).read_text())
    assert marker["adopted"] is True and "dataset/jnd/val/cnn/same/000001.npy" in marker["files"]
    (root / "bapps" / "dataset/jnd/val/cnn/p0/000001.png").unlink()  # damage after adoption: fetched again
    download_dataset("bapps", root, parts="jnd", progress=False)
    assert requested(bapps_server) == ["/jnd.tar.gz"]
    download_dataset("bapps", root, parts="jnd", progress=False, force=True)
    assert requested(bapps_server) == ["/jnd.tar.gz", "/jnd.tar.gz"]


# ---------------------------------------------------------------------------------------------- boundaries


def test_core_data_module_imports_no_task_module():
    """percepbench/data.py is generic: its source names no percepbench.tasks module (at any depth, lazily
    or not), and importing it in a fresh interpreter leaves percepbench.tasks unimported."""
    tree = ast.parse((REPO / "percepbench" / "data.py").read_text(encoding="utf-8"))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert imported and not [m for m in imported if m and (m == "percepbench.tasks" or m.startswith(
        "percepbench.tasks.") or m == "tasks" or m.startswith("tasks."))]
    done = subprocess.run([PYTHON, "-c", "import sys, percepbench.data; "
                                         "print(sorted(m for m in sys.modules if m.startswith('percepbench.tasks')))"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_core_data_module_names_no_builtin_dataset():
    """No built-in dataset is named in the core's code: its strings and identifiers (docstrings aside)."""
    tree = ast.parse((REPO / "percepbench" / "data.py").read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = [n.value for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]
    words += [getattr(n, "id", None) or getattr(n, "attr", None) or getattr(n, "name", "") for n in ast.walk(tree)
              if isinstance(n, (ast.Name, ast.Attribute, ast.FunctionDef, ast.ClassDef))]
    assert len(words) > 100
    for dataset in ("nights", "bapps", "things"):
        assert not [w for w in words if dataset in w.lower()], dataset
