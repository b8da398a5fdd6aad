"""User judgment tables through Hugging Face ``datasets``: Parquet with embedded images, JSON Lines with
paths, save_to_disk folders, Hub datasets (wiring checked with a stand-in loader; no network here)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image

from percepbench.cli import main
from percepbench.results import load_results
from percepbench.specs import MetricSpec

from layouts import png_bytes, write_png

FAST = ["--n-boot", "20", "-q", "--num-workers", "0", "--no-report"]


# (ref, left, right, p): toy distance |a - b| / 255; expected 2AFC score per row
ROWS = [(100, 110, 140, 0.2, 0.8), (100, 150, 120, 0.9, 0.9), (60, 70, 70, 0.3, 0.5)]


def triplet_dataset():
    return datasets.Dataset.from_dict(
        {"ref": [{"bytes": png_bytes(r[0]), "path": None} for r in ROWS],
         "left": [{"bytes": png_bytes(r[1]), "path": None} for r in ROWS],
         "right": [{"bytes": png_bytes(r[2]), "path": None} for r in ROWS],
         "p": [r[3] for r in ROWS]},
        features=datasets.Features({"ref": datasets.Image(), "left": datasets.Image(), "right": datasets.Image(),
                                    "p": datasets.Value("float32")}))


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="test"))
    return "toy-meanabs"


def run(capsys, *args):
    code = main(["run", "-m", "toy-meanabs", *args, *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def scores(out):
    res = load_results(out)
    return res, res.samples["score"].tolist()


def test_parquet_with_embedded_images(capsys, tmp_path, clean_env, toy):
    table = tmp_path / "judgments.parquet"
    triplet_dataset().to_parquet(str(table))
    data = tmp_path / "data"
    code, _, err = run(capsys, "-t", "2afc_csv", "--task-args", f"2afc_csv:path={table}", "--data-root", str(data),
                       "-o", str(tmp_path / "run"))
    assert code == 0, err
    res, got = scores(tmp_path / "run")
    assert got == pytest.approx([r[4] for r in ROWS])
    stored = sorted((data / "user_images").rglob("*.png"))
    assert len(stored) == 7  # 9 image cells, 7 distinct images (100 and 70 repeat): written once each
    assert res.samples["ref"].iloc[0].startswith(str(data / "user_images"))
    proto = res.meta["task_protocols"]["2afc_csv"]
    assert proto["dataset"] == "user parquet table" and proto["source"] == str(table)


def test_jsonl_with_relative_paths_for_jnd(capsys, tmp_path, clean_env, toy):
    for v in (10, 20, 60):
        write_png(tmp_path / "img" / f"{v}.png", v)
    table = tmp_path / "pairs.jsonl"
    table.write_text('{"p0": "img/10.png", "p1": "img/20.png", "same": 1.0}\n'
                     '{"p0": "img/10.png", "p1": "img/60.png", "same": 0.0}\n')
    code, _, err = run(capsys, "-t", "jnd_csv", "--task-args", f"jnd_csv:path={table}", "-o", str(tmp_path / "run"))
    assert code == 0, err
    assert load_results(tmp_path / "run").records["value"].tolist() == [100.0]


def test_save_to_disk_folder(capsys, tmp_path, clean_env, toy):
    folder = tmp_path / "saved"
    triplet_dataset().save_to_disk(str(folder))
    code, _, err = run(capsys, "-t", "2afc_csv", "--task-args", f"2afc_csv:path={folder}",
                       "--data-root", str(tmp_path / "data"), "-o", str(tmp_path / "run"))
    assert code == 0, err
    assert scores(tmp_path / "run")[1] == pytest.approx([r[4] for r in ROWS])


def test_hub_dataset_wiring(capsys, tmp_path, clean_env, toy, monkeypatch):
    calls = {}

    def split_names(repo, revision=None):
        calls["splits"] = (repo, revision)
        return ["train", "test"]

    def load_dataset(repo, split=None, revision=None):
        calls["load"] = (repo, split, revision)
        return triplet_dataset()

    monkeypatch.setattr(datasets, "get_dataset_split_names", split_names)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    code, _, err = run(capsys, "-t", "2afc_csv", "--task-args", "2afc_csv:path=hf://datasets/team/judgments@v2",
                       "--data-root", str(tmp_path / "data"), "-o", str(tmp_path / "run"))
    assert code == 0, err
    assert calls == {"splits": ("team/judgments", "v2"), "load": ("team/judgments", "test", "v2")}
    res, got = scores(tmp_path / "run")
    assert got == pytest.approx([r[4] for r in ROWS])
    assert res.meta["task_protocols"]["2afc_csv"]["dataset"] == "Hub dataset team/judgments@v2"
    code, _, err = run(capsys, "-t", "2afc_csv", "--task-args",
                       "2afc_csv:path=hf://datasets/team/judgments,split=validation", "-o", str(tmp_path / "r2"))
    assert code == 2 and "no split 'validation'; it has train, test" in err


def test_hub_dataset_offline_and_malformed(capsys, tmp_path, clean_env, toy, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "-t", "2afc_csv", "--task-args", "2afc_csv:path=hf://datasets/team/judgments",
                       "-o", str(tmp_path / "r1"))
    assert code == 2 and "hf://datasets/team/judgments: offline mode" in err and "Parquet" in err
    code, _, err = run(capsys, "-t", "2afc_csv", "--task-args", "2afc_csv:path=hf://datasets/judgments",
                       "-o", str(tmp_path / "r2"))
    assert code == 2 and "hf://datasets/<owner>/<name>" in err


@pytest.mark.parametrize(("name", "content", "message"), [
    ("t.parquet", b"not parquet", "cannot read the table with the datasets library"),
    ("t.xlsx", b"x", "unsupported table format .xlsx"),
    ("t.jsonl", b'{"p0": "a.png", "p1": "b.png"}\n', "missing column(s) same"),
])
def test_bad_tables_name_the_file(capsys, tmp_path, clean_env, toy, name, content, message):
    table = tmp_path / name
    table.write_bytes(content)
    code, _, err = run(capsys, "-t", "jnd_csv", "--task-args", f"jnd_csv:path={table}", "-o", str(tmp_path / "run"))
    assert code == 2 and str(table) in err and message in err


def test_embedded_image_dedupe_is_by_content(tmp_path):
    from percepbench.user_tables import store_image

    a = store_image(png_bytes(5), tmp_path)
    b = store_image(png_bytes(5), tmp_path)
    c = store_image(png_bytes(6), tmp_path)
    assert a == b != c and a.suffix == ".png" and np.asarray(Image.open(a)).max() == 5
    assert not list(tmp_path.rglob("*.tmp"))
