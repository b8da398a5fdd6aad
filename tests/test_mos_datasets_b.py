"""``csiq``, ``live``, ``pieapp`` and ``pieapp_2afc`` on trees generated in the official layouts.

Oracles: PSNR computed here with numpy from the image files (``d = 10 log10 MSE``, i.e. -PSNR) and
``scipy.stats.spearmanr``; 2AFC accuracies worked out by hand from the noise levels of the images
(more noise = farther from the reference) and the labels; the ``min_margin`` filter counted by hand.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from percepbench.cli import main
from percepbench.results import load_results
from percepbench.specs import MetricSpec

from layouts import (
    CsiqImage,
    LiveImage,
    PieappRef,
    make_csiq,
    make_live,
    make_pieapp,
    pieapp_files,
    textured,
    xlsx_bytes,
)

FAST = ["--n-boot", "20", "-q", "--num-workers", "0", "--no-report"]
SIZE = 16


def noisy(seed: int, amp: int, noise_seed: int) -> np.ndarray:
    return textured(seed, SIZE, noise=amp, noise_seed=noise_seed)


# ------------------------------------------------------------------------------------------------- trees

CSIQ_REFS = {"1600": textured(1, SIZE), "aerial_city": textured(2, SIZE)}


def csiq_images(**change) -> list[CsiqImage]:
    """12 rated images: 2 references x (noise, blur) x 3 levels; DMOS not a monotone function of the noise
    amplitude (so the SRCC is not 1)."""
    out = []
    dmos = iter([0.10, 0.30, 0.25, 0.05, 0.40, 0.35, 0.20, 0.15, 0.60, 0.12, 0.50, 0.45])
    for ref_seed, image in ((1, 1600), (2, "aerial_city")):
        for kind, amps in (("noise", (4, 12, 30)), ("blur", (6, 9, 40))):
            for level, amp in enumerate(amps, start=1):
                out.append(CsiqImage(image, kind, level, next(dmos), dist=noisy(ref_seed, amp, 10 * level + ref_seed)))
    for i, fields in change.items():
        for k, v in fields.items():
            setattr(out[int(i[1:])], k, v)
    return out


LIVE_REFS = {"bikes.bmp": textured(3, SIZE), "house.bmp": textured(4, SIZE)}


def live_images(**change) -> list[LiveImage]:
    """12 distorted entries (jp2k, wn, fastfading x 2 references x 2); every other entry is a reference copy."""
    out, k = [], {"jp2k": 0, "wn": 0, "fastfading": 0}
    dmos = iter([20.0, 45.0, 38.0, 70.0, 10.0, 55.0, 61.0, 30.0, 25.0, 80.0, 42.0, 41.0])
    for ref_seed, ref in ((3, "bikes.bmp"), (4, "house.bmp")):
        for folder, amps in (("jp2k", (5, 25)), ("wn", (8, 16)), ("fastfading", (3, 35))):
            for amp in amps:
                k[folder] += 2  # img2, img4, ...: the others are copies
                out.append(LiveImage(folder, k[folder], ref, next(dmos),
                                     dist=noisy(ref_seed, amp, 100 + 7 * k[folder] + ref_seed)))
    for i, fields in change.items():
        for key, v in fields.items():
            setattr(out[int(i[1:])], key, v)
    return out


def D(n: str, i: int) -> str:
    return f"distort_{n}_noise_inter_{i}.png"


#: noise amplitude of each distorted image (index 1..4), per reference
AMPS = {"0001": (4, 10, 20, 40), "0002": (6, 15, 30), "0003": (5, 12, 25), "0004": (7, 21)}
SEEDS = {"0001": 11, "0002": 12, "0003": 13, "0004": 14}
#: test pairs (A, B, probability that A is closer); per pair: the 2AFC score by hand (d0 < d1 when A has less
#: noise: score = prob_A; else score = p = 1 - prob_A) and whether |p - 0.5| > 0.1
TEST_PAIRS = {
    "0001": [(1, 2, 0.9), (1, 3, 0.55), (4, 2, 0.3), (3, 4, 0.45), (2, 4, 0.62), (4, 1, 0.8), (0, 1, 0.95)],
    "0002": [(1, 2, 0.7), (3, 1, 0.35), (2, 3, 0.5)],
}
#   0001: .9 (p .1, kept) | .55 (p .45, dropped) | .7 (p .7, kept) | .45 (p .55, dropped) | .62 (p .38, kept)
#         | .2 (p .2, kept) | (reference as A: always left out)
#   0002: .7 (p .3, kept) | .65 (p .65, kept) | .5 (p .5, dropped)
EXPECTED_2AFC = 100 * (0.9 + 0.55 + 0.7 + 0.45 + 0.62 + 0.2 + 0.7 + 0.65 + 0.5) / 9
EXPECTED_2AFC_MARGIN = 100 * (0.9 + 0.7 + 0.62 + 0.2 + 0.7 + 0.65) / 6
TEST_SCORES = {"0001": {1: 0.5, 2: 1.8, 3: 1.2, 4: 3.0, 0: 0.0}, "0002": {1: 0.9, 2: 2.5, 3: 2.2}}


def pieapp_refs(**change) -> dict[str, list[PieappRef]]:
    def name(n, i):
        return f"ref_{n}.png" if i == 0 else D(n, i)

    def ref(n, pairs=(), scores=None):
        seed = SEEDS[n]
        distorted = {D(n, i): noisy(seed, amp, 1000 + 10 * seed + i) for i, amp in enumerate(AMPS[n], start=1)}
        return PieappRef(n, textured(seed, SIZE), distorted,
                         pairs=[(name(n, a), name(n, b), *rest) for a, b, *rest in pairs],
                         scores=None if scores is None else {name(n, i): s for i, s in scores.items()})

    splits = {
        "test": [ref(n, TEST_PAIRS[n], TEST_SCORES[n]) for n in ("0001", "0002")],
        # train: processed probability (column 5) differs from the raw one (column 4, blank where not asked)
        "train": [ref("0003", [(1, 2, 0.8, ""), (3, 2, 0.1, 0.9)])],
        "val": [ref("0004", [(1, 2, 0.75, 0.75)])],
    }
    for fn in change.values():
        fn(splits)
    return splits


def make_all(base: Path, csiq=None, live=None, pieapp=None, csiq_labels="xlsx", **live_opts) -> Path:
    """``base`` as a data root holding csiq/, live/ and pieapp/."""
    make_csiq(base / "csiq", csiq or csiq_images(), CSIQ_REFS, labels=csiq_labels,
              unrated={"dst_imgs/awgn/1600.AWGN.5.png": 9})
    make_live(base / "live", live or live_images(), LIVE_REFS, **live_opts)
    make_pieapp(base / "pieapp", pieapp or pieapp_refs())
    return base


def psnr_distance(a: Path, b: Path) -> float:
    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64) / 255
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64) / 255
    return float(10 * np.log10(np.mean((x - y) ** 2)))


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="test"))
    return "toy-meanabs"


def run(capsys, *args):
    code = main(["run", *args, *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def values(out: Path) -> dict[tuple[str, str, str, str], tuple[float, int]]:
    recs = load_results(out).records
    return {(r.task, r.metric, r.subset, r.measure): (r.value, r.n) for r in recs.itertuples()}


# ------------------------------------------------------------------------------------------- end to end


def test_psnr_ssim_on_all_four_tasks_match_the_oracles(capsys, tmp_path, clean_env):
    root = make_all(tmp_path / "data")
    # CSIQ quirks: a file with other case in another folder is still found
    (root / "csiq/dst_imgs/blur/aerial_city.BLUR.2.png").rename(root / "csiq/dst_imgs/aerial_city.blur.2.PNG")
    out = tmp_path / "run"
    code, _, err = run(capsys, "-m", "psnr,ssim", "-t", "csiq,live,pieapp,pieapp_2afc", "--data-root", str(root),
                       "-o", str(out))
    assert code == 0, err
    got = values(out)

    def srcc_oracle(pairs, human, subsets):
        d = np.array([psnr_distance(a, b) for a, b in pairs])
        expected = {}
        for s in [*sorted(set(subsets)), "all"]:
            m = np.array([s in ("all", t) for t in subsets])
            expected[s] = (spearmanr(-d[m], -np.asarray(human)[m]).statistic, int(m.sum()))
        return expected

    csiq = root / "csiq"
    items = csiq_images()
    folder = {"noise": "awgn", "blur": "blur"}
    pairs = [(csiq / f"src_imgs/{im.image}.png",
              csiq / im.file() if im.file() != "dst_imgs/blur/aerial_city.BLUR.2.png"
              else csiq / "dst_imgs/aerial_city.blur.2.PNG") for im in items]
    for subset, (srcc, n) in srcc_oracle(pairs, [im.dmos for im in items],
                                         [folder[im.dst_type] for im in items]).items():
        assert got[("csiq", "psnr", subset, "srcc")] == (pytest.approx(srcc, abs=1e-9), n)
    assert abs(got[("csiq", "psnr", "all", "srcc")][0]) < 0.999  # not a trivial perfect case

    live = root / "live"
    items = live_images()
    pairs = [(live / "refimgs" / im.ref, live / im.folder / f"img{im.k}.bmp") for im in items]
    for subset, (srcc, n) in srcc_oracle(pairs, [im.dmos for im in items], [im.folder for im in items]).items():
        assert got[("live", "psnr", subset, "srcc")] == (pytest.approx(srcc, abs=1e-9), n)

    pie = root / "pieapp"
    pairs, scores = [], []
    for n, table in TEST_SCORES.items():
        for i, s in table.items():
            if i:  # the reference's own row is left out
                pairs.append((pie / f"reference_images/test/ref_{n}.png", pie / f"distorted_images/test/ref_{n}/{D(n, i)}"))
                scores.append(s)
    d = np.array([psnr_distance(a, b) for a, b in pairs])
    assert got[("pieapp", "psnr", "test", "srcc")] == (pytest.approx(spearmanr(-d, -np.array(scores)).statistic), 7)

    # 2AFC: the hand-worked scores assume more noise = larger PSNR distance; check that with the oracle
    for n in ("0001", "0002"):
        ref = pie / f"reference_images/test/ref_{n}.png"
        dists = [psnr_distance(ref, pie / f"distorted_images/test/ref_{n}/{D(n, i)}") for i in range(1, len(AMPS[n]) + 1)]
        assert dists == sorted(dists)
    assert got[("pieapp_2afc", "psnr", "test", "2afc_accuracy")] == (pytest.approx(EXPECTED_2AFC), 9)
    for task, measure, n in (("csiq", "srcc", 12), ("live", "srcc", 12), ("pieapp", "srcc", 7),
                             ("pieapp_2afc", "2afc_accuracy", 9)):
        subset = "all" if task in ("csiq", "live") else "test"
        value, count = got[(task, "ssim", subset, measure)]
        assert count == n and np.isfinite(value)
    protocols = load_results(out).meta["task_protocols"]
    assert protocols["pieapp_2afc"]["pairs_with_the_reference"] == 1 and protocols["pieapp_2afc"]["pairs_in_files"] == 10
    assert "1 of 982" not in protocols["live"]["filters"] and f"{982 - 12} of 982" in protocols["live"]["filters"]


@pytest.mark.parametrize(("args", "expected", "n"), [
    ([], EXPECTED_2AFC, 9),
    (["--task-args", "pieapp_2afc:min_margin=0.1"], EXPECTED_2AFC_MARGIN, 6),
    (["--task-args", "pieapp_2afc:split=train"], 100 * (0.8 + 0.9) / 2, 2),  # column 5, not the raw column 4
])
def test_pieapp_2afc_split_and_margin_by_hand(capsys, tmp_path, clean_env, toy, args, expected, n):
    """With the toy metric (mean |a - b|) more noise is also farther; the scores are the ones worked by hand."""
    root = tmp_path / "data"
    make_pieapp(root / "pieapp", pieapp_refs())
    code, _, err = run(capsys, "-m", toy, "-t", "pieapp_2afc", "--data-root", str(root), "-o", str(tmp_path / "r"),
                       *args)
    assert code == 0, err
    ((value, count),) = [v for k, v in values(tmp_path / "r").items() if k[3] == "2afc_accuracy"]
    assert value == pytest.approx(expected) and count == n


def test_csiq_reads_the_csv_export_and_live_the_realigned_scores(capsys, tmp_path, clean_env, toy):
    root = make_all(tmp_path / "data", csiq_labels="csv")
    assert not (root / "csiq/csiq.DMOS.xlsx").exists()
    images = live_images(i0={"realigned": 99.0})  # realigned DMOS 100 - dmos, except entry 0: reverses its rank
    make_live(root / "live", images, LIVE_REFS)
    code, _, err = run(capsys, "-m", toy, "-t", "csiq,live", "--task-args", "live:scores=realigned",
                       "--task-args", "csiq:types=awgn", "--data-root", str(root), "-o", str(tmp_path / "r"))
    assert code == 0, err
    got = values(tmp_path / "r")
    assert {k[2] for k in got if k[0] == "csiq"} == {"awgn"} and got[("csiq", toy, "awgn", "srcc")][1] == 6
    live = root / "live"
    d = np.array([np.abs(np.asarray(Image.open(live / "refimgs" / im.ref).convert("RGB"), float)
                         - np.asarray(Image.open(live / im.folder / f"img{im.k}.bmp").convert("RGB"), float)).mean()
                  for im in images])
    realigned = np.array([99.0] + [100 - im.dmos for im in images[1:]])
    assert got[("live", toy, "all", "srcc")][0] == pytest.approx(spearmanr(-d, -realigned).statistic)


# ----------------------------------------------------------------------------------------------- bad data


def _drop_first_test_score(splits):
    splits["test"][0].scores = None
    splits["test"][1].scores = None


def _pair_of_another_reference(root):
    with open(root / "pieapp/labels/test/ref_0001_pairwise_labels.csv", "a") as f:
        f.write(f"ref_0002.png, {D('0002', 1)}, {D('0002', 2)}, 0.5\n")


@pytest.mark.parametrize(("task", "build", "edit", "file", "message"), [
    ("csiq", {}, lambda r: (r / "csiq/csiq.DMOS.xlsx").unlink(), "csiq/csiq.DMOS.xlsx", "CSIQ label file not found"),
    ("csiq", {"csiq": csiq_images(i3={"dmos": "abc"})}, None, "csiq/csiq.DMOS.xlsx",
     "row 8: dmos 'abc' / dst_lev '1' not numbers"),
    ("csiq", {"csiq": csiq_images(i2={"dmos": 1.5})}, None, "csiq/csiq.DMOS.xlsx", "row 7: dmos 1.5 outside [0.0, 1.0]"),
    ("csiq", {"csiq": csiq_images(i1={"dst_type": "ringing"})}, None, "csiq/csiq.DMOS.xlsx", "unknown dst_type 'ringing'"),
    ("csiq", {"csiq": csiq_images(i4={"missing": ("dist",)})}, None, "csiq/dst_imgs/blur/1600.BLUR.2.png",
     "1 of 14 referenced image file(s) do not exist"),
    ("csiq", {}, lambda r: (r / "csiq/dst_imgs/1600.awgn.1.png").write_bytes(b"x"), "csiq/dst_imgs",
     "two files named"),
    ("live", {}, lambda r: (r / "live/dmos.mat").unlink(), "live/dmos.mat", "LIVE label file not found"),
    ("live", {"entries": 981}, None, "live/dmos.mat", "'dmos' has 981 entries; LIVE release 2 has 982"),
    ("live", {"live": live_images(i5={"dmos": float("nan")})}, None, "live/dmos.mat", "1 value(s) that are not finite"),
    ("live", {}, lambda r: (r / "live/refimgs/house.bmp").unlink(), "live/refimgs/house.bmp", "do not exist"),
    ("live", {}, lambda r: (r / "live/refnames_all.mat").write_bytes(b"not a mat file"), "live/refnames_all.mat",
     "cannot read this MATLAB file"),
    ("pieapp_2afc", {"pieapp": pieapp_refs(x=lambda s: setattr(s["test"][1], "pairs", [(D("0002", 1), D("0002", 2), 1.2)]))},
     None, "pieapp/labels/test/ref_0002_pairwise_labels.csv", "column 4 has 1 value(s) outside [0, 1] (line 2: '1.2')"),
    ("pieapp_2afc", {"pieapp": pieapp_refs(x=lambda s: setattr(s["test"][1], "pairs", [(D("0002", 1), D("0002", 2), "x")]))},
     None, "pieapp/labels/test/ref_0002_pairwise_labels.csv", "column 4 has 1 value(s) not a finite number"),
    ("pieapp_2afc", {}, _pair_of_another_reference, "pieapp/labels/test/ref_0001_pairwise_labels.csv",
     "1 row(s) name another reference than ref_0001 in column 1 (line 9: 'ref_0002.png')"),
    ("pieapp_2afc", {}, lambda r: (r / f"pieapp/distorted_images/test/ref_0001/{D('0001', 3)}").unlink(),
     f"pieapp/distorted_images/test/ref_0001/{D('0001', 3)}", "do not exist"),
    ("pieapp", {"pieapp": pieapp_refs(x=_drop_first_test_score)}, None, "pieapp/labels/test",
     "no PieAPP label files *_per_image_score.csv"),
    ("pieapp", {}, lambda r: (r / "pieapp/labels/test/ref_0002_per_image_score.csv").write_text(
        "ref. image, distorted image, score\nref_0002.png, x.png\n"),
     "pieapp/labels/test/ref_0002_per_image_score.csv", "1 row(s) with an empty cell in columns 1, 2, 3 (line 2)"),
])
def test_bad_data_exits_2_naming_the_file(capsys, tmp_path, clean_env, toy, task, build, edit, file, message):
    root = make_all(tmp_path / "data", **build)
    if edit is not None:
        edit(root)
    code, _, err = run(capsys, "-m", toy, "-t", task, "--data-root", str(root), "-o", str(tmp_path / "r"))
    assert code == 2
    assert str(root / file) in err and message in err, err


@pytest.mark.parametrize(("args", "message"), [
    ("pieapp_2afc:min_margin=0.7", "min_margin must be in [0, 0.5)"),
    ("pieapp_2afc:split=holdout", "unknown PieAPP split 'holdout'"),
    ("live:scores=mos", "scores must be dmos"),
    ("csiq:types=awgn+ringing", "CSIQ: unknown distortion type(s) ringing in types="),
    ("live:types=blur", "LIVE: unknown distortion type(s) blur in types="),
])
def test_bad_options_are_usage_errors(capsys, tmp_path, clean_env, toy, args, message):
    task = args.split(":")[0]
    code, _, err = run(capsys, "-m", toy, "-t", task, "--task-args", args, "-o", str(tmp_path / "r"))
    assert code == 2 and message in err


def test_no_data_says_what_to_fetch(capsys, tmp_path, clean_env, toy):
    for task, words in (("csiq", "https://s2.smu.edu/~eclarson/csiq/"), ("live", "databaserelease2.zip"),
                        ("pieapp", "all_data_PieAPP_dataset_CVPR_2018.zip")):
        code, _, err = run(capsys, "-m", toy, "-t", task, "--data-root", str(tmp_path / "empty"),
                           "-o", str(tmp_path / f"r-{task}"))
        assert code == 2 and str(tmp_path / "empty" / task) in err and words in err, err


# -------------------------------------------------------------------------------------------- data sources


def test_verify_and_manual_download(capsys, tmp_path, clean_env):
    root = make_all(tmp_path / "data")
    for name in ("csiq", "live", "pieapp"):
        assert main(["data", "verify", name, "--root", str(root)]) == 0, capsys.readouterr()
    capsys.readouterr()
    (root / "csiq/src_imgs/aerial_city.png").unlink()
    (root / "live/wn/img2.bmp").unlink()
    (root / "pieapp/labels/val/ref_0004_pairwise_labels.csv").write_text("header\nref_0004.png, a.png, b.png, 2, 2\n")
    for name, bad in (("csiq", "csiq/src_imgs/aerial_city.png"), ("live", "live/wn/img2.bmp"),
                      ("pieapp", "pieapp/labels/val/ref_0004_pairwise_labels.csv")):
        assert main(["data", "verify", name, "--root", str(root)]) == 2
        assert str(root / bad) in capsys.readouterr().out
    for name, words in (("csiq", "csiq.DMOS.xlsx"), ("live", "request form")):
        assert main(["data", "download", name, "--root", str(tmp_path / "empty")]) == 2
        err = capsys.readouterr().err
        assert words in err and str(tmp_path / "empty" / name) in err


def test_pieapp_downloads_from_the_official_archive_layout(capsys, tmp_path, clean_env, server, monkeypatch):
    """The archive served as all_data_PieAPP_dataset_CVPR_2018.zip with a top folder PieAPP_dataset_CVPR_2018/."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel, content in pieapp_files(pieapp_refs()).items():
            zf.writestr(f"PieAPP_dataset_CVPR_2018/{rel}", content)
        zf.writestr("PieAPP_dataset_CVPR_2018/README.txt", "terms")
    (server.root / "all_data_PieAPP_dataset_CVPR_2018.zip").parent.mkdir(parents=True, exist_ok=True)
    (server.root / "all_data_PieAPP_dataset_CVPR_2018.zip").write_bytes(buf.getvalue())
    monkeypatch.setenv("PERCEPBENCH_DATA_URL_PIEAPP", server.base + "/")
    monkeypatch.delenv("PERCEPBENCH_OFFLINE", raising=False)
    root = tmp_path / "data"
    assert main(["data", "download", "pieapp", "--root", str(root), "-q"]) == 0, capsys.readouterr()
    assert (root / "pieapp/labels/test/ref_0001_pairwise_labels.csv").is_file()
    assert main(["data", "verify", "pieapp", "--root", str(root)]) == 0


def test_xlsx_reader_cell_kinds_and_damaged_workbooks(tmp_path):
    """Inline strings, formula results, booleans, numbers and gaps, as spreadsheet programs write them."""
    from percepbench.errors import DataError
    from percepbench.tasks.csiq import read_xlsx_sheet

    good = tmp_path / "book.xlsx"
    good.write_bytes(xlsx_bytes({"all_by_image": [["a", 1600, None, 0.25]]}))
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["xl/worksheets/sheet1.xml"] = (
        b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
        b'<row r="2"><c r="B2" t="inlineStr"><is><t>inline</t></is></c><c r="C2" t="str"><f>A1</f><v>calc</v></c>'
        b'<c r="E2" t="b"><v>1</v></c><c r="F2"><f>1+1</f><v>2</v></c></row></sheetData></worksheet>')
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, content in members.items():
            zf.writestr(n, content)
    other = tmp_path / "other.xlsx"
    other.write_bytes(buf.getvalue())
    assert read_xlsx_sheet(good, "all_by_image") == [(1, ["a", 1600.0, None, 0.25])]
    assert read_xlsx_sheet(other, "all_by_image") == [(2, [None, "inline", "calc", None, True, 2.0])]
    with pytest.raises(DataError, match=r"no sheet 'by_type' in this workbook; sheets: all_by_image"):
        read_xlsx_sheet(good, "by_type")
    (tmp_path / "bad.xlsx").write_bytes(b"PK not really a zip")
    with pytest.raises(DataError, match=r"bad\.xlsx: cannot read this \.xlsx workbook"):
        read_xlsx_sheet(tmp_path / "bad.xlsx", "all_by_image")
