"""The built-in retrieval datasets ``imagenet_r`` and ``coco_retrieval``: their tasks prepared on tiny trees in
the official layouts (tests/layouts.py), every data error, ``percepbench data verify`` and ``data download``
through the real downloader from a local HTTP server (tests/local_http.py).

Expected items, labels, subsets and relevant counts R are worked out by hand in each test's comments."""

from __future__ import annotations

import doctest
import io
import json
import zipfile
from pathlib import Path

import pytest

import percepbench.tasks.coco as coco
import percepbench.tasks.imagenet_r as imagenet_r
from percepbench.cli import main
from percepbench.data import download_dataset, get_source, verify_dataset
from percepbench.errors import DataError, UsageError
from percepbench.registry import DATASETS, TASKS

from layouts import (
    DAMAGED,
    CocoImage,
    coco_files,
    coco_instances,
    imagenet_r_files,
    make_coco,
    make_imagenet_r,
    tar_bytes,
)

pytestmark = pytest.mark.usefixtures("weights_env")

A, B, C, D = "n01443537", "n01484850", "n01494475", "n01498041"


@pytest.fixture(autouse=True)
def no_user_data(monkeypatch, tmp_path):
    """Neither $PERCEPBENCH_DATA nor the user's cache folder is ever used: the default root is private."""
    monkeypatch.delenv("PERCEPBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in DATASETS.names():
        monkeypatch.delenv(f"PERCEPBENCH_DATA_URL_{name.upper()}", raising=False)


def test_doctests():
    for module in (imagenet_r, coco):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_registered_tasks_and_sources():
    for name, target in (("imagenet_r", "percepbench.tasks.imagenet_r:ImageNetR"),
                         ("coco_retrieval", "percepbench.tasks.coco:COCORetrieval")):
        spec = TASKS.get(name)
        assert (spec.target, spec.kind, spec.measure, spec.needs_data) == (target, "retrieval", "recall@1", True)
        assert spec.licence and spec.citation
    inr = get_source("imagenet_r")
    assert inr.folder == "imagenet_r" and [p.name for p in inr.select(None)] == ["images"]
    assert inr.url(inr.part("images")) == "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
    assert inr.part("images").kind == "tar" and inr.part("images").produces == ("imagenet-r",)
    src = get_source("coco")
    assert src.folder == "coco" and [p.name for p in src.select(None)] == ["val2017", "instances_val2017"]
    assert src.url(src.part("val2017")) == "http://images.cocodataset.org/zips/val2017.zip"
    member = src.part("instances_val2017")
    assert src.url(member) == "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
    assert (member.kind, member.member, member.produces) == (
        "zip_member", "annotations/instances_val2017.json", ("annotations/instances_val2017.json",))
    for source in (inr, src):
        assert source.description and source.licence and source.citation and source.approx_size and source.layout


# ----------------------------------------------------------------------------------------------- ImageNet-R

#: 3 classes x 3 images, plus class D with a single image (it has no other image of its class: R = 0)
CLASSES = {
    A: {"art_0.jpg": 10, "art_1.jpg": 20, "sketch_0.jpg": 30},
    B: {"art_2.jpg": 40, "cartoon_0.jpg": 50, "misc.jpg": 60},
    C: {"sketch_1.jpg": 70, "sketch_12.JPEG": 80, "toy_0.png": 90},
    D: {"origami_0.jpg": 100},
}
SUBSETS = {f"{A}/art_0.jpg": "art", f"{A}/art_1.jpg": "art", f"{A}/sketch_0.jpg": "sketch",
           f"{B}/art_2.jpg": "art", f"{B}/cartoon_0.jpg": "cartoon", f"{B}/misc.jpg": "other",
           f"{C}/sketch_1.jpg": "sketch", f"{C}/sketch_12.JPEG": "sketch", f"{C}/toy_0.png": "toy"}


def imagenet_r_tree(folder: Path, classes=CLASSES, **options) -> Path:
    root = make_imagenet_r(folder, classes, **options)
    # ignored: a file at the top, a hidden folder, a non-image file and a sub-folder inside a class
    (root / "README.txt").write_text("about")
    (root / ".cache").mkdir()
    (root / A / "notes.txt").write_text("x")
    (root / A / "extra").mkdir()
    return root


def test_imagenet_r_prepare_by_hand(tmp_path):
    root = imagenet_r_tree(tmp_path / "imagenet-r")
    assert (root / A / "art_0.jpg").read_bytes()[:2] == b"\xff\xd8"  # real JPEG files, as in the official set
    task = imagenet_r.ImageNetR(root=str(root), ks="1+2")
    task.prepare(progress=False)
    items = task.items.set_index("item")
    # every image of A, B, C is a query with R = 2 (the other two images of its class); D's only image has no
    # relevant gallery image, so it is left out of the queries but stays in the gallery
    assert sorted(items.index) == sorted(SUBSETS)
    assert items["subset"].to_dict() == SUBSETS
    assert items["relevant"].tolist() == [2] * 9
    assert items["label"].to_dict() == {i: i.split("/")[0] for i in SUBSETS}
    assert items.loc[f"{A}/art_0.jpg", "path"] == str(root / A / "art_0.jpg")
    assert task.images["id"].tolist() == sorted([*SUBSETS, f"{D}/origami_0.jpg"])  # the gallery, in id order
    assert len(task.gallery_images) == 10 and len(task.query_images) == 9
    protocol = task.protocol()
    assert protocol["classes"] == 4 and protocol["dataset_images"] == 10 and protocol["queries_without_relevant"] == 1
    assert protocol["subset_images"] == {"art": 3, "cartoon": 1, "origami": 1, "other": 1, "sketch": 3, "toy": 1}
    assert "200" in protocol["note"] and "30,000" in protocol["note"] and protocol["root"] == str(root)
    assert imagenet_r.count_note(200, 30_000) == ""  # the official counts add no note


def test_imagenet_r_default_root_and_sampling(tmp_path):
    data = tmp_path / "data"
    imagenet_r_tree(data / "imagenet_r" / "imagenet-r")
    task = imagenet_r.ImageNetR(queries=4, ks="1")
    task.prepare(data_root=str(data), progress=False, seed=3)
    assert len(task.items) == 4 and set(task.items["relevant"]) == {2}
    assert task.protocol()["root"] == str(data / "imagenet_r" / "imagenet-r")
    # match=all on single labels is the same relation as any
    task = imagenet_r.ImageNetR(root=str(data / "imagenet_r" / "imagenet-r"), match="all", ks="1")
    task.prepare(progress=False)
    assert task.items["relevant"].tolist() == [2] * 9


def expect_data_error(task, path: Path, *fragments: str, data_root: str | None = None) -> str:
    with pytest.raises(DataError) as info:
        task.prepare(data_root=data_root, progress=False)
    msg = str(info.value)
    assert str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_imagenet_r_errors_name_the_folder(tmp_path):
    # the folder is missing: the message says how to get the data, with the exact command for the data root
    data = tmp_path / "data"
    expect_data_error(imagenet_r.ImageNetR(), data / "imagenet_r" / "imagenet-r",
                      f"percepbench data download imagenet_r --root {data}", data_root=str(data))
    missing = tmp_path / "nowhere"
    expect_data_error(imagenet_r.ImageNetR(root=str(missing)), missing, "percepbench data download imagenet_r")
    # no class folders at all
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("about")
    expect_data_error(imagenet_r.ImageNetR(root=str(empty)), empty, "no class folders")
    # folders that are not WordNet ids are listed
    odd = make_imagenet_r(tmp_path / "odd", {A: {"art_0.jpg": 1, "art_1.jpg": 2}})
    (odd / "cats").mkdir()
    (odd / "n123").mkdir()
    expect_data_error(imagenet_r.ImageNetR(root=str(odd)), odd, "not named by a WordNet id", "cats", "n123")
    # a class folder without images (a non-image file does not count)
    hollow = make_imagenet_r(tmp_path / "hollow", {A: {"art_0.jpg": 1, "art_1.jpg": 2}})
    (hollow / B).mkdir()
    (hollow / B / "notes.txt").write_text("x")
    expect_data_error(imagenet_r.ImageNetR(root=str(hollow)), hollow / B, "hold no image")
    # a damaged image: the retrieval task's file check names it
    bad = make_imagenet_r(tmp_path / "bad", CLASSES, damaged=[f"{B}/art_2.jpg"])
    expect_data_error(imagenet_r.ImageNetR(root=str(bad), ks="1"), bad / B / "art_2.jpg", "cannot be read")
    with pytest.raises(ValueError, match="match"):
        imagenet_r.ImageNetR(match="most")


#: grey levels chosen so that each query's nearest neighbour under |a - b| is clear (gaps >= 3, so the JPEG
#: rounding of a flat grey, at most 1, changes nothing): B/misc (27) sits next to A/sketch_0 (24)
RUN_CLASSES = {
    A: {"art_0.jpg": 10, "art_1.jpg": 16, "sketch_0.jpg": 24},
    B: {"art_2.jpg": 100, "cartoon_0.jpg": 105, "misc.jpg": 27},
    C: {"sketch_1.jpg": 200, "sketch_12.JPEG": 206, "toy_0.png": 213},
    D: {"origami_0.jpg": 150},
}


def test_imagenet_r_run_with_a_toy_metric(tmp_path, capsys, clean_env, register_temp):
    from percepbench.results import load_results
    from percepbench.specs import MetricSpec

    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="test"))
    make_imagenet_r(tmp_path / "data" / "imagenet_r" / "imagenet-r", RUN_CLASSES)
    code = main(["run", "-m", "toy-meanabs", "-t", "imagenet_r", "--data-root", str(tmp_path / "data"),
                 "--task-args", "imagenet_r:ks=1+5", "-o", str(tmp_path / "run"), "--device", "cpu",
                 "--n-boot", "20", "-q", "--num-workers", "0"])
    assert code == 0, capsys.readouterr().err
    records = {(r.subset, r.measure): (r.value, r.n) for r in load_results(tmp_path / "run").records.itertuples()}
    # nearest neighbours: A/sketch_0 (24) -> B/misc (27) and B/misc -> A/sketch_0: the two misses; every other
    # query's nearest image is of its own class (D/origami_0, 150, is no one's nearest)
    want = {"art": (100.0, 3), "sketch": (200 / 3, 3), "cartoon": (100.0, 1), "other": (0.0, 1),
            "toy": (100.0, 1), "all": (700 / 9, 9)}
    got = {subset: records[(subset, "recall@1")] for subset in want}
    assert got.keys() == want.keys()
    for subset, (value, n) in want.items():
        assert got[subset][0] == pytest.approx(value) and got[subset][1] == n, subset


def verify_cli(name: str, root: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["data", "verify", name, "--root", str(root), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_imagenet_r_verify(tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    dest = root / "imagenet_r" / "imagenet-r"
    fix = f"percepbench data download imagenet_r --root {root}"
    code, out = verify_cli("imagenet_r", root, capsys)
    assert code == 2 and f"{dest}: ImageNet-R folder missing. Fix: run `{fix}`" in out
    imagenet_r_tree(dest)
    # a good tree that is not the official size: both counts are problems
    problems = verify_dataset("imagenet_r", root)
    assert problems == [
        f"{dest}: 4 class folder(s), whereas the official ImageNet-R has 200 (a partial or different copy). "
        f"Fix: run `{fix}`",
        f"{dest}: 10 image(s), whereas the official ImageNet-R has 30,000 (a partial or different copy). "
        f"Fix: run `{fix}`"]
    # with the official counts made those of this tree, the same tree is good
    monkeypatch.setattr(imagenet_r, "OFFICIAL_CLASSES", 4)
    monkeypatch.setattr(imagenet_r, "OFFICIAL_IMAGES", 10)
    code, out = verify_cli("imagenet_r", root, capsys, "--deep")
    assert code == 0 and f"imagenet_r: ok under {root}" in out
    # a bad tree: a folder that is not a WordNet id, an empty class folder, a damaged image (deep only)
    (dest / "misc").mkdir()
    (dest / "misc" / "x.jpg").write_bytes(b"")
    (dest / "n09999999").mkdir()
    (dest / C / "toy_0.png").write_bytes(DAMAGED)
    shallow = verify_dataset("imagenet_r", root)
    assert len(shallow) == 2 and all(p.startswith(str(dest)) and p.endswith(f"Fix: run `{fix}`") for p in shallow)
    assert "misc" in shallow[0] and "WordNet" in shallow[0] and str(dest / "n09999999") in shallow[1]
    code, out = verify_cli("imagenet_r", root, capsys, "--deep")
    assert code == 2 and "imagenet_r: 3 problem(s)" in out
    assert f"{dest / C / 'toy_0.png'}: image cannot be read" in out
    assert f"Fix: delete {dest / C / 'toy_0.png'}, then run `{fix}`" in out


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_imagenet_r_download_verify_prepare(server, monkeypatch, tmp_path, capsys):
    files = imagenet_r_files(CLASSES)  # imagenet-r/<wnid>/<file>: the official tar's members
    server.add("imagenet-r.tar", tar_bytes(files))
    monkeypatch.setenv("PERCEPBENCH_DATA_URL_IMAGENET_R", server.base + "/")
    root = tmp_path / "data"
    assert main(["data", "download", "imagenet_r", "--root", str(root), "--quiet"]) == 0
    dest = root / "imagenet_r"
    on_disk = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*")
               if p.is_file() and ".percepbench" not in p.parts}
    assert on_disk == files
    assert [r["path"] for r in server.requests] == ["/imagenet-r.tar"]
    monkeypatch.setattr(imagenet_r, "OFFICIAL_CLASSES", 4)
    monkeypatch.setattr(imagenet_r, "OFFICIAL_IMAGES", 10)
    capsys.readouterr()
    code, out = verify_cli("imagenet_r", root, capsys, "--deep")
    assert code == 0 and "images: archive sha256" in out
    task = imagenet_r.ImageNetR(ks="1+5")
    task.prepare(data_root=str(root), progress=False)
    assert task.items.set_index("item")["subset"].to_dict() == SUBSETS
    # a second download finds the part done and fetches nothing
    download_dataset("imagenet_r", root, progress=False)
    assert len(server.requests) == 1


# ----------------------------------------------------------------------------------------------------- COCO

PERSON, CAT, DOG = 1, 17, 18
#: labels by min_area (worked out by hand from the instances below):
#:   min_area 0:   1 {person, cat}  2 {cat}  3 {person, dog}  4 {}  5 {dog}  6 {person, cat}
#:   min_area 100: 1 {person}       2 {cat}  3 {}             4 {}  5 {dog}  6 {person, cat}
#:   min_area 500: 1 {person}       2 {}     3 {}             4 {}  5 {}     6 {person}
IMAGES = [
    CocoImage(1, 10, ((PERSON, 500.0), (CAT, 50.0))),
    CocoImage(2, 20, ((CAT, 400.0),)),
    CocoImage(3, 30, ((DOG, 30.0, 1), (PERSON, 20.0))),  # the dog is a crowd annotation: it counts
    CocoImage(4, 40),  # no annotation: a distractor, never a query
    CocoImage(5, 50, ((DOG, 300.0),)),
    CocoImage(6, 60, ((PERSON, 1000.0), (CAT, 150.0), (CAT, 90.0))),
]


def coco_id(n: int) -> str:
    return f"val2017/{n:012d}.jpg"


def prepared_coco(root: Path, **options) -> coco.COCORetrieval:
    task = coco.COCORetrieval(root=str(root), ks="1", **options)
    task.prepare(progress=False)
    return task


def relevant(task) -> dict[str, int]:
    return dict(zip(task.items["item"], task.items["relevant"].tolist(), strict=True))


def test_coco_prepare_by_hand(tmp_path):
    root = make_coco(tmp_path / "coco", IMAGES)
    task = prepared_coco(root)
    # match=any, leave-one-out: R = the other images sharing a category with the query
    assert relevant(task) == {coco_id(1): 3, coco_id(2): 2, coco_id(3): 3, coco_id(5): 1, coco_id(6): 3}
    labels = dict(zip(task.items["item"], task.items["label"], strict=True))
    assert labels == {coco_id(1): "person|cat", coco_id(2): "cat", coco_id(3): "person|dog", coco_id(5): "dog",
                      coco_id(6): "person|cat"}
    assert task.images["id"].tolist() == [coco_id(i) for i in range(1, 7)]  # image 4 stays in the gallery
    assert len(task.gallery_images) == 6 and set(task.items["subset"]) == {"all"}
    assert task.items.set_index("item").loc[coco_id(1), "path"] == str(root / "val2017" / "000000000001.jpg")
    protocol = task.protocol()
    assert protocol["unlabelled_images"] == 1 and protocol["unlabelled_query_candidates"] == 1
    assert protocol["dataset_images"] == 6 and protocol["categories"] == 5 and protocol["min_area"] == 0
    assert "5,000" in protocol["note"] and "iscrowd" in protocol["instances"]


def test_coco_min_area_and_label_modes(tmp_path):
    root = make_coco(tmp_path / "coco", IMAGES)
    # min_area=100: images 3 and 4 lose every label; 5 {dog} has no relevant image left (R = 0)
    task = prepared_coco(root, min_area=100)
    assert relevant(task) == {coco_id(1): 1, coco_id(2): 1, coco_id(6): 2}
    assert task.protocol()["unlabelled_images"] == 2 and task.protocol()["queries_without_relevant"] == 1
    # the bound is inclusive: person at exactly 500 counts for image 1
    task = prepared_coco(root, min_area="500")
    assert relevant(task) == {coco_id(1): 1, coco_id(6): 1}
    assert task.protocol()["unlabelled_images"] == 4
    # labels=ids: the category ids as text, in id order
    task = prepared_coco(root, labels="ids")
    assert dict(zip(task.items["item"], task.items["label"], strict=True))[coco_id(3)] == "1|18"
    # match=all: the gallery image must have every category of the query
    task = prepared_coco(root, match="all")
    assert relevant(task) == {coco_id(1): 1, coco_id(2): 2, coco_id(5): 1, coco_id(6): 1}
    assert task.protocol()["queries_without_relevant"] == 1  # image 3 {person, dog}: no other has both
    for bad in (-1, "x", float("nan"), True):
        with pytest.raises(ValueError, match="min_area"):
            coco.COCORetrieval(min_area=bad)
    with pytest.raises(ValueError, match="labels must be names or ids"):
        coco.COCORetrieval(labels="words")


def edited(change) -> dict:
    content = coco_instances(IMAGES)
    change(content)
    return content


@pytest.mark.parametrize(("change", "fragments"), [
    (lambda c: c.pop("categories"), ("missing key(s) categories",)),
    (lambda c: [c.pop("images"), c.pop("annotations")], ("missing key(s) images, annotations",)),
    (lambda c: c["annotations"][0].update(image_id=99), ("image_id 99", "annotation 1")),
    (lambda c: [a.update(category_id=7) for a in c["annotations"]], ("category_id 7", "and 4 more")),
    (lambda c: c["images"].append({"id": 1, "file_name": "x.jpg"}), ("image id 1 appears more than once",)),
    (lambda c: c["images"][0].update(file_name="../secret.jpg"), ("'../secret.jpg'", "not a plain path")),
    (lambda c: c["images"][1].pop("file_name"), ("lack 'id' or 'file_name'", "positions 1")),
    (lambda c: c.update(annotations={}), ("'annotations' must be a list",)),
    (lambda c: c["categories"].append({"id": 17, "name": "kitten"}), ("category id 17 appears more than once",)),
    (lambda c: c["categories"].append({"id": 99, "name": "cat"}), ("category name(s) used by several", "cat")),
])
def test_coco_json_errors_name_the_file(tmp_path, change, fragments):
    root = make_coco(tmp_path / "coco", IMAGES, instances=edited(change))
    expect_data_error(coco.COCORetrieval(root=str(root)), root / "annotations" / "instances_val2017.json",
                      *fragments)


def test_coco_file_errors_name_the_file(tmp_path):
    data = tmp_path / "data"
    expect_data_error(coco.COCORetrieval(), data / "coco", f"percepbench data download coco --root {data}",
                      data_root=str(data))
    root = make_coco(tmp_path / "coco", IMAGES)
    json_path = root / "annotations" / "instances_val2017.json"
    json_path.unlink()
    expect_data_error(coco.COCORetrieval(root=str(root)), json_path, "not found", "percepbench data download coco")
    json_path.write_text('{"images": [')
    expect_data_error(coco.COCORetrieval(root=str(root)), json_path, "cannot parse")
    json_path.write_text("[1, 2]")
    expect_data_error(coco.COCORetrieval(root=str(root)), json_path, "JSON object")
    # min_area > 0 needs a numeric area on every annotation
    content = coco_instances(IMAGES)
    del content["annotations"][2]["area"]
    json_path.write_text(json.dumps(content))
    expect_data_error(coco.COCORetrieval(root=str(root), min_area=1), json_path, "'area'", "positions 2")
    assert len(prepared_coco(root).items) == 5  # min_area = 0 never reads it
    # an image named in the JSON is missing, another is damaged: the retrieval file check names them
    missing = make_coco(tmp_path / "c2", [*IMAGES[:3], CocoImage(7, 1, ((CAT, 9.0),), missing=True)])
    expect_data_error(coco.COCORetrieval(root=str(missing), ks="1"), missing / "val2017" / "000000000007.jpg",
                      "do not exist")
    damaged = make_coco(tmp_path / "c3", [*IMAGES[:3], CocoImage(8, 1, ((CAT, 9.0),), damaged=True)])
    expect_data_error(coco.COCORetrieval(root=str(damaged), ks="1"), damaged / "val2017" / "000000000008.jpg",
                      "cannot be read")


def test_coco_verify(tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    dest = root / "coco"
    json_path = dest / "annotations" / "instances_val2017.json"
    fix = f"percepbench data download coco --root {root}"
    code, out = verify_cli("coco", root, capsys)
    assert code == 2 and f"{json_path}: COCO annotation file missing. Fix: run `{fix}`" in out
    assert f"{dest / 'val2017'}: COCO image folder missing. Fix: run `{fix}`" in out
    make_coco(dest, IMAGES)
    assert verify_dataset("coco", root) == [
        f"{json_path}: names 6 image(s), whereas the official val2017 has 5,000 (a different annotation file). "
        f"Fix: delete {json_path}, then run `{fix}`",
        f"{dest / 'val2017'}: 6 image(s), whereas the official val2017 has 5,000 (a partial or different copy). "
        f"Fix: run `{fix}`"]
    monkeypatch.setattr(coco, "OFFICIAL_IMAGES", 6)
    code, out = verify_cli("coco", root, capsys, "--deep")
    assert code == 0 and f"coco: ok under {root}" in out
    # bad: an image named in the JSON missing, another damaged, and a stray file making the count right again
    (dest / "val2017" / "000000000002.jpg").unlink()
    (dest / "val2017" / "stray.jpg").write_bytes((dest / "val2017" / "000000000001.jpg").read_bytes())
    (dest / "val2017" / "000000000005.jpg").write_bytes(DAMAGED)
    assert verify_dataset("coco", root) == [f"{dest / 'val2017' / '000000000002.jpg'}: image missing. Fix: run `{fix}`"]
    code, out = verify_cli("coco", root, capsys, "--deep")
    assert code == 2 and f"{dest / 'val2017' / '000000000005.jpg'}: image cannot be read" in out
    # a broken JSON is reported (per part) with the file named
    json_path.write_text("{")
    assert verify_dataset("coco", root, parts="val2017") == []  # the JSON is not checked for that part alone
    (problem,) = verify_dataset("coco", root, parts="instances_val2017")
    assert problem.startswith(f"{json_path}: cannot parse") and problem.endswith(f"then run `{fix}`")


def test_coco_download_reads_the_json_by_range(server, monkeypatch, tmp_path, capsys):
    files = coco_files(IMAGES)
    json_rel = "annotations/instances_val2017.json"
    (server.root / "zips").mkdir()
    (server.root / "annotations").mkdir()
    server.add("zips/val2017.zip", zip_bytes({k: v for k, v in files.items() if k.startswith("val2017/")}))
    # the annotations zip also holds a 1 MiB member (stored, first) that must not be fetched
    padding = bytes(range(256)) * 4096
    server.add("annotations/annotations_trainval2017.zip",
               zip_bytes({"annotations/instances_train2017.json": padding, json_rel: files[json_rel]},
                         zipfile.ZIP_STORED))
    monkeypatch.setenv("PERCEPBENCH_DATA_URL_COCO", server.base + "/")
    root = tmp_path / "data"
    assert main(["data", "download", "coco", "--root", str(root), "--quiet"]) == 0
    dest = root / "coco"
    assert (dest / json_rel).read_bytes() == files[json_rel]
    assert {p.relative_to(dest).as_posix() for p in (dest / "val2017").iterdir()} == {
        k for k in files if k.startswith("val2017/")}
    whole = [r for r in server.requests if r["path"] == "/zips/val2017.zip"]
    assert len(whole) == 1
    ranged = [r for r in server.requests if r["path"] == "/annotations/annotations_trainval2017.zip"]
    # only range requests, and none of them starts inside the padding member's data (the first 1 MiB)
    assert ranged and all(r["range"] for r in ranged)
    starts = [int(r["range"].removeprefix("bytes=").rstrip("-")) for r in ranged]
    assert all(s == 0 or s > len(padding) for s in starts), starts
    assert not (dest / "annotations" / "instances_train2017.json").exists()
    monkeypatch.setattr(coco, "OFFICIAL_IMAGES", 6)
    capsys.readouterr()
    code, out = verify_cli("coco", root, capsys, "--deep")
    assert code == 0 and "instances_val2017: member annotations/instances_val2017.json sha256" in out
    task = prepared_coco(dest)
    assert relevant(task) == {coco_id(1): 3, coco_id(2): 2, coco_id(3): 3, coco_id(5): 1, coco_id(6): 3}


def test_unknown_part_is_a_usage_error():
    with pytest.raises(UsageError, match="did you mean 'val2017'"):
        verify_dataset("coco", parts="val2071")
