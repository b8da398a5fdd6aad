"""``tid2013``, ``kadid10k``, ``pipal``: generated trees in the official layouts, loaders, bad data through the
CLI, ``data download|verify``, and an end-to-end run whose PSNR SRCC is checked against scipy on the same files."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from percepbench import create_task
from percepbench.cli import main
from percepbench.results import load_results
from percepbench.specs import MetricSpec

import layouts
from layouts import MOSImage, make_kadid10k, make_pipal, make_tid2013, random_mos_images

FAST = ["-q", "--num-workers", "0"]


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="|a - b| / 255"))
    return "toy-meanabs"


@pytest.fixture(autouse=True)
def no_user_data(monkeypatch, tmp_path):
    """Neither $PERCEPBENCH_DATA nor the user's cache folder is used; no mirror URL leaks in."""
    monkeypatch.delenv("PERCEPBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "cache"))
    for name in ("TID2013", "KADID10K", "PIPAL"):
        monkeypatch.delenv(f"PERCEPBENCH_DATA_URL_{name}", raising=False)


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run(capsys, *args, n_boot: int = 20):
    """``percepbench run`` (the 4-parameter logistic is refitted on every bootstrap resample: keep it small)."""
    return cli(capsys, "run", *args, *FAST, "--n-boot", str(n_boot))


# --------------------------------------------------------------------------------------------- small trees

TID_IMAGES = [  # references 1, 2 and 25 (i25.bmp); types 1, 8, 24; levels 1, 2
    MOSImage(ref, t, level, score=round(6.5 - level - 0.1 * t - 0.05 * ref, 4), offset=8 * level + t, noise=3)
    for ref in (1, 2, 25) for t in (1, 8, 24) for level in (1, 2)
]
#: one distorted file named in upper case on disk while the label file says i01_08_2.bmp
TID_IMAGES[3] = MOSImage(1, 8, 2, TID_IMAGES[3].score, offset=TID_IMAGES[3].offset, noise=3, file="I01_08_2.bmp")
KADID_IMAGES = [MOSImage(ref, t, level, score=round(4.8 - 0.9 * level + 0.01 * t, 4), offset=6 * level + t // 5)
                for ref in (1, 2) for t in (1, 25) for level in (1, 2, 3)]
PIPAL_IMAGES = [MOSImage(ref, t, level, score=round(1700 - 150 * level - 7 * t - ref, 4), offset=9 * level + t)
                for ref in (1, 2) for t in (0, 10) for level in (0, 1, 2)]


def trees(base: Path) -> Path:
    """The three datasets under data root ``base``."""
    make_tid2013(base / "tid2013", TID_IMAGES)
    make_kadid10k(base / "kadid10k", KADID_IMAGES)
    make_pipal(base / "pipal", PIPAL_IMAGES)
    return base


def prepared(name: str, root: Path, **options):
    task = create_task(name, root=str(root), **options)
    task.prepare(progress=False)
    return task


# ------------------------------------------------------------------------------------------------ loaders


def test_tid2013_loader_resolves_case_and_groups_by_reference(tmp_path):
    task = prepared("tid2013", make_tid2013(tmp_path / "tid2013", TID_IMAGES))
    items = task.items
    assert len(items) == 18
    assert set(items["subset"]) == {"01_additive_gaussian_noise", "08_gaussian_blur",
                                    "24_sparse_sampling_and_reconstruction"}
    assert items.groupby("reference").size().to_dict() == {"I01": 6, "I02": 6, "I25": 6}
    paths = dict(zip(items["item"], task.image_paths(), strict=True))
    # the label says i01_08_2.bmp, the file on disk is I01_08_2.bmp; reference 25 is i25.bmp, the others I0N.BMP
    assert Path(paths["i01_08_2.bmp"][1]).name == "I01_08_2.bmp"
    assert Path(paths["i25_01_1.bmp"][0]).name == "i25.bmp" and Path(paths["i02_24_2.bmp"][0]).name == "I02.BMP"
    assert all(Path(d).is_file() and Path(r).is_file() for r, d in paths.values())
    assert items.set_index("item").loc["i02_08_1.bmp", "mos"] == pytest.approx(6.5 - 1 - 0.8 - 0.1)


def test_tid2013_types_option_by_number_and_name(tmp_path):
    task = prepared("tid2013", make_tid2013(tmp_path / "tid2013", TID_IMAGES), types="1+gaussian_blur")
    assert sorted(task.items["subset"].unique()) == ["01_additive_gaussian_noise", "08_gaussian_blur"]
    assert len(task.items) == 12 and task.protocol()["rows_in_labels"] == 18
    with pytest.raises(ValueError, match="unknown distortion type 'blur'"):
        create_task("tid2013", types="blur")


def test_kadid10k_loader(tmp_path):
    task = prepared("kadid10k", make_kadid10k(tmp_path / "kadid10k", KADID_IMAGES))
    items = task.items
    assert len(items) == 12
    assert set(items["subset"]) == {"01_gaussian_blur", "25_contrast_change"}
    assert items.groupby("reference").size().to_dict() == {"I01": 6, "I02": 6}
    ref, dist = task.image_paths()[0]
    assert Path(ref).name == "I01.png" and Path(dist).name == "I01_01_01.png"
    assert "higher = better" in task.protocol()["scores"]


@pytest.mark.parametrize("dist_dir", ["Train_Dis", "Train_Dist"])
def test_pipal_loader_searches_distortion_folders(tmp_path, dist_dir):
    task = prepared("pipal", make_pipal(tmp_path / "pipal", PIPAL_IMAGES, dist_dir=dist_dir))
    items = task.items
    assert len(items) == 12 and set(items["subset"]) == {"all"}
    assert items.groupby("reference").size().to_dict() == {"A0001": 6, "A0002": 6}
    paths = dict(zip(items["item"], task.image_paths(), strict=True))
    ref, dist = paths["A0002_10_01.bmp"]
    assert Path(ref).name == "A0002.bmp" and Path(dist).parent.name == "Distortion_1"  # 1 + 10 % 2
    assert items.set_index("item").loc["A0002_10_01.bmp", "mos"] == pytest.approx(1700 - 150 - 70 - 2)


def test_label_files_with_crlf_tabs_and_spaces_after_commas(tmp_path):
    """Windows line ends, tabs and repeated spaces in mos_with_names.txt; ``name, score`` in PIPAL labels."""
    folder = make_tid2013(tmp_path / "tid2013", TID_IMAGES)
    labels = folder / "mos_with_names.txt"
    text = labels.read_text().replace(" ", "\t  ").replace("\n", "\r\n")
    labels.write_bytes(("\r\n" + text).encode())  # a blank first line too
    assert len(prepared("tid2013", folder).items) == 18
    folder = make_pipal(tmp_path / "pipal", PIPAL_IMAGES)
    for f in (folder / "Train_Label").iterdir():
        f.write_text(f.read_text().replace(",", " , "))
    items = prepared("pipal", folder).items.set_index("item")
    assert len(items) == 12 and items.loc["A0001_00_00.bmp", "mos"] == pytest.approx(1700 - 1)


# --------------------------------------------------------------------------------------- bad data, exit 2


def _edit_tid(root: Path, case: str) -> Path:
    folder = make_tid2013(root / "tid2013", TID_IMAGES)
    labels = folder / "mos_with_names.txt"
    if case == "labels":
        labels.unlink()
        return labels
    if case == "line":
        make_tid2013(root / "tid2013", TID_IMAGES, extra_lines=["4.2"])
        return labels
    if case == "range":
        make_tid2013(root / "tid2013", [*TID_IMAGES[:-1], MOSImage(25, 24, 2, 9.5)])
        return labels
    if case == "reference":
        (folder / "reference_images" / "I02.BMP").unlink()
        return folder / "reference_images" / "I02.BMP"
    (folder / "distorted_images" / "i02_01_2.bmp").unlink()
    return folder / "distorted_images" / "i02_01_2.bmp"


def _edit_kadid(root: Path, case: str) -> Path:
    folder = make_kadid10k(root / "kadid10k", KADID_IMAGES)
    labels = folder / "dmos.csv"
    if case == "labels":
        labels.unlink()
        return labels
    if case == "line":
        make_kadid10k(root / "kadid10k", KADID_IMAGES, rows=[{"dist_img": "I01-01-04.png", "ref_img": "I01.png",
                                                               "dmos": 3.0, "var": 0.1}])
        return labels
    if case == "range":
        make_kadid10k(root / "kadid10k", [*KADID_IMAGES[:-1], MOSImage(2, 25, 3, 5.5)])
        return labels
    if case == "reference":
        (folder / "images" / "I02.png").unlink()
        return folder / "images" / "I02.png"
    (folder / "images" / "I01_25_03.png").unlink()
    return folder / "images" / "I01_25_03.png"


def _edit_pipal(root: Path, case: str) -> Path:
    folder = make_pipal(root / "pipal", PIPAL_IMAGES)
    if case == "labels":
        for f in (folder / "Train_Label").iterdir():
            f.unlink()
        return folder / "Train_Label"
    if case == "line":
        make_pipal(root / "pipal", PIPAL_IMAGES, extra_lines={2: ["A0002_11_00.bmp 1500"]})
        return folder / "Train_Label" / "A0002.txt"
    if case == "range":
        make_pipal(root / "pipal", PIPAL_IMAGES, extra_lines={1: ["A0001_11_00.bmp,inf"]})
        return folder / "Train_Label" / "A0001.txt"
    if case == "reference":
        (folder / "Train_Ref" / "A0001.bmp").unlink()
        return folder / "Train_Ref" / "A0001.bmp"
    next((folder / "Train_Dis").rglob("A0002_00_01.bmp")).unlink()
    return folder / "Train_Dis" / "A0002_00_01.bmp"  # messages name the folder searched (recursively)


EDITS = {"tid2013": _edit_tid, "kadid10k": _edit_kadid, "pipal": _edit_pipal}
MESSAGES = {  # (dataset, case): text the message must hold besides the file's path
    ("tid2013", "labels"): "label file (mos_with_names.txt) not found",
    ("tid2013", "line"): "1 line(s) are not '<MOS> i<reference",
    ("tid2013", "range"): "outside the documented range [0, 9] (line 18: 9.5)",
    ("tid2013", "reference"): "6 distorted image(s) without their reference image",
    ("tid2013", "missing"): "1 of 21 referenced image file(s) do not exist",
    ("kadid10k", "labels"): "label file (dmos.csv) not found",
    ("kadid10k", "line"): "1 dist_img value(s) are not 'I<reference>_<type 01-25>_<level>.png': line 14",
    ("kadid10k", "range"): "outside the documented range [1, 5] (line 13: 5.5)",
    ("kadid10k", "reference"): "6 distorted image(s) without their reference image",
    ("kadid10k", "missing"): "1 of 14 referenced image file(s) do not exist",
    ("pipal", "labels"): "no PIPAL label files (*.txt) in it",
    ("pipal", "line"): "1 line(s) are not '<distorted image>,<Elo score>': line 7",
    ("pipal", "range"): "1 Elo score value(s) not a finite number (line 7: 'inf')",
    ("pipal", "reference"): "6 distorted image(s) without their reference image",
    ("pipal", "missing"): "1 of 14 referenced image file(s) do not exist",
}


@pytest.mark.parametrize(("dataset", "case"), list(MESSAGES))
def test_bad_data_exits_2_naming_the_file(capsys, tmp_path, toy, dataset, case):
    named = EDITS[dataset](tmp_path / "data", case)
    code, _, err = run(capsys, "-m", toy, "-t", dataset, "--data-root", str(tmp_path / "data"),
                       "-o", str(tmp_path / "run"))
    assert code == 2, err
    assert str(named) in err and MESSAGES[(dataset, case)] in err, err
    assert "Traceback" not in err
    if case == "labels":  # says where the data comes from, with the exact command for this data root
        assert f"percepbench data download {dataset} --root {tmp_path / 'data'}" in err, err


def test_pipal_has_no_types_option(capsys, tmp_path, toy):
    make_pipal(tmp_path / "data" / "pipal", PIPAL_IMAGES)
    code, _, err = run(capsys, "-m", toy, "-t", "pipal", "--data-root", str(tmp_path / "data"), "--task-args",
                       "pipal:types=1", "-o", str(tmp_path / "run"))
    assert code == 2 and "unknown option 'types'; its options: root" in err


@pytest.mark.parametrize("dataset", ["tid2013", "kadid10k", "pipal"])
def test_no_data_says_how_to_get_it(capsys, tmp_path, toy, dataset):
    code, _, err = run(capsys, "-m", toy, "-t", dataset, "--data-root", str(tmp_path / "empty"),
                       "-o", str(tmp_path / "run"))
    assert code == 2 and str(tmp_path / "empty" / dataset) in err
    assert f"percepbench data download {dataset} --root {tmp_path / 'empty'}" in err


# ------------------------------------------------------------------------------------------- end to end


def _rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def _psnr(ref: str, dist: str) -> float:
    """The oracle: PSNR in dB of images in [0, 1], MSE over every pixel and channel."""
    return float(10 * np.log10(1.0 / np.mean((_rgb(ref) - _rgb(dist)) ** 2)))


def test_end_to_end_psnr_srcc_matches_scipy(capsys, tmp_path):
    """psnr and ssim on all three datasets; psnr's SRCC (pooled and per type) equals scipy's Spearman
    between the numpy PSNR of the same files and the human scores."""
    base = tmp_path / "data"
    sets = {
        "tid2013": (make_tid2013, random_mos_images((1, 2, 3), (1, 8, 17), (1, 2, 3), seed=1, lo=0.5, hi=7.0)),
        "kadid10k": (make_kadid10k, random_mos_images((1, 2, 3), (2, 10), (1, 2, 3, 4), seed=2, lo=1.0, hi=5.0)),
        "pipal": (make_pipal, random_mos_images((1, 2, 3), (0, 3), (1, 2, 3), seed=3, lo=900.0, hi=1800.0)),
    }
    for name, (make, images) in sets.items():
        make(base / name, images, size=24)
    out = tmp_path / "run"
    code, _, err = run(capsys, "-m", "psnr,ssim", "-t", "tid2013,kadid10k,pipal", "--data-root", str(base),
                       "-o", str(out), "--device", "cpu", n_boot=4)
    assert code == 0, err
    res = load_results(out)
    recs = res.records.set_index(["task", "metric", "subset", "measure"])["value"]
    for name, (_, images) in sets.items():
        task = prepared(name, base / name)
        psnr = np.array([_psnr(r, d) for r, d in task.image_paths()])
        scores = task.items["mos"].to_numpy()
        gaps = np.diff(np.sort(psnr))
        assert gaps.min() > 1e-3  # no near-ties that float32 could reorder
        expected = spearmanr(psnr, scores).statistic
        assert recs[(name, "psnr", "all", "srcc")] == pytest.approx(expected, abs=1e-9), name
        assert 0.3 < expected < 1.0  # a meaningful, not perfect, correlation
        for subset in task.items["subset"].unique() if name != "pipal" else ():
            mask = (task.items["subset"] == subset).to_numpy()
            assert recs[(name, "psnr", subset, "srcc")] == pytest.approx(
                spearmanr(psnr[mask], scores[mask]).statistic, abs=1e-9)
        assert np.isfinite(recs[(name, "ssim", "all", "srcc")])
        assert len(images) == len(task.items)
    n_types = {"tid2013": 3, "kadid10k": 2, "pipal": 0}
    for name, k in n_types.items():  # one record per type and measure, plus the pooled ones
        subsets = set(res.records[(res.records["task"] == name) & (res.records["metric"] == "psnr")]["subset"])
        assert len(subsets) == k + 1 if k else subsets == {"all"}


def test_kadid_scores_are_quality_so_degradation_correlates_positively(capsys, tmp_path, toy):
    """dmos falls as the images get worse (it is a MOS despite its name): a metric whose distance is the true
    degradation gets SRCC +1, not -1."""
    # flat distorted images over references with noise of amplitude 12: |difference| = offset - noise, so the
    # mean absolute difference is offset - mean(noise) (< 1); offsets 25..60, 5 apart, order the distances
    offsets = {(ref, level): 15 + 10 * level + 5 * (ref - 1) for ref in (1, 2) for level in (1, 2, 3, 4)}
    images = [MOSImage(ref, 3, level, score=round(5.0 - 0.06 * off, 4), offset=off)
              for (ref, level), off in offsets.items()]
    make_kadid10k(tmp_path / "data" / "kadid10k", images)
    code, _, err = run(capsys, "-m", toy, "-t", "kadid10k", "--data-root", str(tmp_path / "data"),
                       "-o", str(tmp_path / "run"))
    assert code == 0, err
    recs = load_results(tmp_path / "run").records.set_index(["subset", "measure"])["value"]
    assert recs[("03_motion_blur", "srcc")] == pytest.approx(1.0)
    assert recs[("03_motion_blur", "krcc")] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------- data download/verify


@pytest.mark.parametrize(("dataset", "expected"), [
    ("tid2013", ["http://www.ponomarenko.info/tid2013/tid2013.rar", "unrar x tid2013.rar", "mos_with_names.txt"]),
    ("pipal", ["https://www.jasongt.com/projectpages/pipal.html", "Train_Label", "Distortion_1"]),
])
def test_manual_download_prints_instructions_and_exits_2(capsys, tmp_path, dataset, expected):
    root = tmp_path / "data"
    code, _, err = cli(capsys, "data", "download", dataset, "--root", str(root), "-q")
    assert code == 2
    for text in [*expected, str(root / dataset), f"percepbench data verify {dataset} --root {root}"]:
        assert text in err, text
    # once the files are in place, download has nothing left to do
    trees(root)
    assert cli(capsys, "data", "download", dataset, "--root", str(root), "-q")[0] == 0


@pytest.mark.parametrize("dataset", ["tid2013", "kadid10k", "pipal"])
def test_verify_names_every_problem(capsys, tmp_path, dataset):
    root = trees(tmp_path / "data")
    code, out, _ = cli(capsys, "data", "verify", dataset, "--root", str(root), "--deep")
    assert code == 0 and f"{dataset}: ok" in out, out
    named = EDITS[dataset](root, "missing")
    code, out, _ = cli(capsys, "data", "verify", dataset, "--root", str(root))
    assert code == 2 and f"{named}: image missing" in out, out
    EDITS[dataset](root, "range")
    code, out, _ = cli(capsys, "data", "verify", dataset, "--root", str(root))
    assert code == 2 and ("outside the documented range" in out or "not a finite number" in out), out


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_kadid10k_downloads_from_a_local_server_and_runs(capsys, tmp_path, server, monkeypatch, weights_env, toy):
    """The official zip's layout (kadid10k/dmos.csv, kadid10k/images/...) served over HTTP: download,
    verify, run, and a second download fetches nothing."""
    (server.root / "kadid10k.zip").write_bytes(_zip(layouts.kadid10k_files(KADID_IMAGES, prefix="kadid10k")))
    monkeypatch.setenv("PERCEPBENCH_DATA_URL_KADID10K", server.base + "/")
    root = tmp_path / "data"
    code, _, err = cli(capsys, "data", "download", "kadid10k", "--root", str(root), "-q")
    assert code == 0, err
    assert (root / "kadid10k" / "dmos.csv").is_file() and (root / "kadid10k" / "images" / "I02_25_03.png").is_file()
    assert [r["path"] for r in server.requests] == ["/kadid10k.zip"]
    assert cli(capsys, "data", "verify", "kadid10k", "--root", str(root))[0] == 0
    assert cli(capsys, "data", "download", "kadid10k", "--root", str(root), "-q")[0] == 0
    assert len(server.requests) == 1
    code, _, err = run(capsys, "-m", toy, "-t", "kadid10k", "--data-root", str(root), "-o", str(tmp_path / "run"))
    assert code == 0, err
