"""Retrieval: the set-level task kind. Rank a gallery per query; score recall@k, precision@k and mAP@k.

A retrieval task declares a set of labelled images (:meth:`RetrievalTask.load_images`: one row per image
with ``id``, ``path``, ``labels`` and optionally ``role`` and ``subset``), and from it the **queries** and the
**gallery**. The runner (the only place that joins metrics and tasks) ranks the gallery for every query
with the metric: embedding metrics embed each unique image once and search with faiss
(:mod:`percepbench.search`); other metrics compute query x gallery distances in blocks, up to
``max_pairs`` distance evaluations. The task turns the ranking into measures.

Protocol (percepbench's own: the DreamSim paper's retrieval results were judged by people, not scored;
recorded in ``results.json`` under ``task_protocols``):

- the **gallery** is every image (or those with ``role`` ``gallery``/``both``; ``gallery=N`` keeps a seeded
  sample of N); **queries** are gallery images (or those with ``role`` ``query``/``both``; ``queries=N`` a
  seeded sample). A query is never in its own gallery (leave-one-out);
- the gallery is ranked by ascending distance; **ties are broken by image id** (the gallery is held in id
  order), distances that agree to about 6 significant digits counting as ties
  (:func:`percepbench.search.tie_key`), so rankings are deterministic and do not hang on float rounding;
- an image is **relevant** to a query when their label sets match: ``match=any`` (default: they share a
  label), ``match=all`` (the gallery image has every label of the query), ``match=jaccard:<t>``
  (intersection over union >= t, 0 < t <= 1);
- R = the number of relevant gallery images of a query (itself excluded). Queries with R = 0 can neither
  hit nor miss: they are left out of every measure and counted in the protocol (``queries_without_relevant``);
- per query, for each k in ``ks`` (default 1, 5, 10; k larger than the gallery a query sees is an error):
  ``recall@k`` = 100 if any of the top k is relevant else 0; ``precision@k`` = 100 x (relevant in the top
  k) / k; ``map@k``: AP@k = (1 / min(k, R)) x sum over i <= k of P@i x rel_i, P@i the precision at i;
- each measure is the mean over queries, with a bootstrap 95% CI over queries; per ``subset`` (a column of
  the image table) and pooled (``all``); with ``per_class=true`` also per label (subset ``class:<label>``,
  over the queries that carry the label).

Samples (one row per query and metric): ``item`` (the query id), ``subset``, ``label`` (labels joined by
``|``), ``path``, ``relevant`` (R), ``topk_ids``, ``topk_paths``, ``topk_distances``, ``topk_hits`` (lists of
length max(ks), best first), one column per measure (``recall@1``... as a fraction in [0, 1]: x 100 gives
the record's units) and ``score`` (the headline measure, ``recall@<first k>``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from percepbench.errors import DataError, UsageError
from percepbench.results import ALL
from percepbench.specs import InputConvention
from percepbench.stats import bootstrap_ci, paired_comparison
from percepbench.tasks.base import Task
from percepbench.tasks.files import FileImages, check_files, listed, split_list

if TYPE_CHECKING:  # torch loads when the runner reads a dataset, so `percepbench list` stays light
    from torch.utils.data import Dataset

#: the measure families, in report order
FAMILIES = ("recall", "precision", "map")
DEFAULT_KS = (1, 5, 10)
#: query x gallery distance evaluations a metric without embeddings may run before it is refused
DEFAULT_MAX_PAIRS = 2_000_000
#: the prefix of per-class subsets
CLASS_PREFIX = "class:"
#: the image-table columns a task's ``load_images`` returns (``role`` and ``subset`` optional)
IMAGE_COLUMNS = ("id", "path", "labels")
ROLES = ("query", "gallery", "both")
INDEXES = ("exact", "ivf", "hnsw")


def measure_names(ks: Sequence[int]) -> list[str]:
    """``["recall@1", "recall@5", ..., "precision@1", ..., "map@10"]`` for ``ks``."""
    return [f"{family}@{k}" for family in FAMILIES for k in ks]


def parse_ks(value: Any) -> tuple[int, ...]:
    """``ks=1+5+10`` (or a list): distinct positive integers, sorted."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]  # --task-args ks=5 arrives as a number
    items = split_list(value) if isinstance(value, str) else [str(v) for v in (value or [])]
    try:
        ks = sorted({int(v) for v in items})
    except ValueError:
        raise ValueError(f"ks must be positive integers such as ks=1+5+10, got {value!r}") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers such as ks=1+5+10, got {value!r}")
    return tuple(ks)


def parse_match(value: str) -> tuple[str, float]:
    """``"any"``, ``"all"`` or ``"jaccard:<t>"`` -> ``(rule, threshold)``."""
    text = str(value).strip().lower()
    if text in ("any", "all"):
        return text, 0.0
    m = re.fullmatch(r"jaccard:([0-9]*\.?[0-9]+)", text)
    if m and 0.0 < float(m.group(1)) <= 1.0:
        return "jaccard", float(m.group(1))
    raise ValueError(f"match must be any, all or jaccard:<t> with 0 < t <= 1, got {value!r}")


def split_labels(value: Any) -> tuple[str, ...]:
    """A label cell as a tuple of labels: ``"a|b|c"``, a list, or one value; empty parts dropped."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = [str(v).strip() for v in value]
    else:
        parts = [p.strip() for p in str(value).split("|")]
    return tuple(dict.fromkeys(p for p in parts if p))


# ------------------------------------------------------------------------------------------------ relevance


class Relevance:
    """Relevance between label sets under a match rule, computed once per pair of distinct label sets.

    Images with the same label set share a "combo"; the relevance of every (query combo, gallery combo)
    pair is what decides R and the hits, so the work grows with the number of distinct label sets, not of
    images.
    """

    def __init__(self, labels: Sequence[tuple[str, ...]], rule: str, threshold: float = 0.0) -> None:
        self.rule, self.threshold = rule, threshold
        keys: dict[frozenset[str], int] = {}
        self.combo = np.array([keys.setdefault(frozenset(ls), len(keys)) for ls in labels], dtype=np.int64)
        self.combos = list(keys)
        self._memo: dict[tuple[int, int], bool] = {}

    def pair(self, a: int, b: int) -> bool:
        """Is an image of combo ``b`` relevant to a query of combo ``a``?"""
        key = (a, b)
        hit = self._memo.get(key)
        if hit is None:
            qa, gb = self.combos[a], self.combos[b]
            inter = len(qa & gb)
            if self.rule == "any":
                hit = inter > 0
            elif self.rule == "all":
                hit = bool(qa) and qa <= gb
            else:
                union = len(qa | gb)
                hit = union > 0 and inter / union >= self.threshold
            self._memo[key] = hit
        return hit

    def counts(self, query_images: np.ndarray, gallery_images: np.ndarray) -> np.ndarray:
        """R before leave-one-out: per query image, the gallery images relevant to it (itself included)."""
        g_combos, g_counts = np.unique(self.combo[gallery_images], return_counts=True)
        q_combos = np.unique(self.combo[query_images])
        per_combo = {}
        for a in q_combos.tolist():
            rel = np.fromiter((self.pair(a, b) for b in g_combos.tolist()), dtype=bool, count=len(g_combos))
            per_combo[a] = int(g_counts[rel].sum())
        return np.array([per_combo[c] for c in self.combo[query_images].tolist()], dtype=np.int64)

    def hits(self, query_images: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """``(Q, K)`` bool: candidate image ``candidates[q, j]`` relevant to query image ``query_images[q]``."""
        qc = self.combo[query_images]
        cc = self.combo[candidates]
        out = np.empty(candidates.shape, dtype=bool)
        for q in range(candidates.shape[0]):
            a = int(qc[q])
            out[q] = [self.pair(a, int(b)) for b in cc[q]]
        return out


def retrieval_measures(hits: np.ndarray, relevant: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-query measures (fractions in [0, 1]) from the top-K hit flags and R.

    ``hits`` is ``(Q, K)`` with K >= max(ks), best first; ``relevant`` (Q,) holds R >= 1.

    >>> m = retrieval_measures(np.array([[False, True, True]]), np.array([4]), [1, 3])
    >>> [round(float(m[k][0]), 4) for k in ("recall@1", "recall@3", "precision@3", "map@3")]
    [0.0, 1.0, 0.6667, 0.3889]
    """
    hits = np.asarray(hits, dtype=bool)
    relevant = np.asarray(relevant, dtype=np.int64)
    if hits.ndim != 2 or hits.shape[0] != relevant.shape[0]:
        raise ValueError(f"hits must be (Q, K) and relevant (Q,), got {hits.shape} and {relevant.shape}")
    if max(ks) > hits.shape[1]:
        raise ValueError(f"k = {max(ks)} needs {max(ks)} ranked items per query, got {hits.shape[1]}")
    if (relevant < 1).any():
        raise ValueError("every query needs R >= 1 (queries without relevant items are left out)")
    rel = hits.astype(np.float64)
    cum = np.cumsum(rel, axis=1)
    precision_at = cum / np.arange(1, hits.shape[1] + 1)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = (cum[:, k - 1] > 0).astype(np.float64)
    for k in ks:
        out[f"precision@{k}"] = cum[:, k - 1] / k
    for k in ks:
        out[f"map@{k}"] = (precision_at[:, :k] * rel[:, :k]).sum(axis=1) / np.minimum(k, relevant)
    return {name: out[name] for name in measure_names(ks)}


# ------------------------------------------------------------------------------------------------- the task


class RetrievalTask(Task):
    """Base of the retrieval tasks: subclasses implement :meth:`load_images`.

    After :meth:`prepare` the runner reads ``images`` (one row per image used, in id order: ``id``,
    ``path``), ``query_images`` (Q,) and ``gallery_images`` (G,) positions into ``images`` (the gallery
    ascending, which is id order), ``self_in_gallery`` (Q,) each query's position in the gallery or -1,
    ``k`` (the ranking depth, max(ks)), ``max_pairs`` and ``search`` (index options for
    :func:`percepbench.search.search`).
    """

    set_level: ClassVar[bool] = True
    slots: ClassVar[tuple[str, ...]] = ()
    comparisons: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    #: load size for metrics that take native-size images (retrieval sets mix image sizes)
    native_load: ClassVar[tuple[int, str]] = (224, "bicubic")
    #: how the runner labels that load size in ``meta.protocol``
    resize_note: ClassVar[str] = "the retrieval task's load size for native-size metrics, option size="

    def __init__(self, ks: Any = DEFAULT_KS, queries: int | None = None, gallery: int | None = None,
                 match: str = "any", per_class: bool = False, max_pairs: int = DEFAULT_MAX_PAIRS,
                 index: str = "exact", nprobe: int = 16, ef_search: int = 128, size: int | None = None) -> None:
        self.ks = parse_ks(ks)
        self.k = self.ks[-1]
        self.measure = f"recall@{self.ks[0]}"
        self.match, self.match_threshold = parse_match(match)
        self.n_queries = _optional_count(queries, "queries")
        self.n_gallery = _optional_count(gallery, "gallery")
        if not isinstance(per_class, bool):
            raise ValueError(f"per_class must be true or false, got {per_class!r}")
        self.per_class = per_class
        max_pairs = int(float(max_pairs)) if isinstance(max_pairs, str) else max_pairs
        if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
            raise ValueError(f"max_pairs must be a positive integer, got {max_pairs!r}")
        self.max_pairs = max_pairs
        if index not in INDEXES:
            raise ValueError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.search = {"index": index, "nprobe": nprobe, "ef_search": ef_search}
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 8:
                raise ValueError(f"size must be an integer >= 8 (pixels), got {size!r}")
            self.native_load = (size, self.native_load[1])
        self._items: pd.DataFrame | None = None
        self.images = pd.DataFrame(columns=["id", "path"])
        self.query_images = np.zeros(0, dtype=np.int64)
        self.gallery_images = np.zeros(0, dtype=np.int64)
        self.self_in_gallery = np.zeros(0, dtype=np.int64)
        self._relevance: Relevance | None = None
        self._protocol: dict[str, Any] = {}

    # -- what subclasses provide

    def load_images(self, *, data_root: str | None, num_workers: int, progress: bool
                    ) -> tuple[pd.DataFrame, dict[str, Any], str]:
        """``(table, protocol, what)``: one row per image with ``id`` (unique text), ``path`` (absolute),
        ``labels`` (a tuple of label strings; may be empty only for images that are never queries) and
        optionally ``role`` (query/gallery/both) and ``subset``; the protocol entries describing the data;
        ``what`` names the data in messages (a file or folder). Raise :class:`DataError` naming the file
        on bad data."""
        raise NotImplementedError

    # -- the Task interface

    @property
    def measures(self) -> list[str]:
        return measure_names(self.ks)

    def inputs_for(self, inputs: InputConvention) -> InputConvention:
        if inputs.size is None:
            import dataclasses

            size, interpolation = self.native_load
            return dataclasses.replace(inputs, size=size, interpolation=interpolation)  # type: ignore[arg-type]
        return inputs

    def image_dataset(self, paths: list[str], inputs: InputConvention) -> Dataset:
        return FileImages(paths, inputs)

    def image_files(self) -> list[str]:
        """Every image the ranking uses, in the order of ``images`` (embedding row i = file i)."""
        return self.images["path"].tolist()

    def pair_count(self) -> int:
        """Distance evaluations a metric without embeddings needs: queries x gallery."""
        return len(self.query_images) * len(self.gallery_images)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        table, protocol, what = self.load_images(data_root=data_root, num_workers=num_workers, progress=progress)
        table = self._checked_table(table, what)
        rng = np.random.default_rng(seed)
        role = table["role"].to_numpy() if "role" in table.columns else np.full(len(table), "both", dtype=object)
        gallery = np.flatnonzero(np.isin(role, ("gallery", "both")))
        if self.n_gallery is not None:
            if self.n_gallery > len(gallery):
                raise UsageError(f"{what}: gallery={self.n_gallery} but only {len(gallery)} gallery images")
            gallery = np.sort(rng.choice(gallery, size=self.n_gallery, replace=False))
        in_gallery = np.zeros(len(table), dtype=bool)
        in_gallery[gallery] = True
        candidates = np.flatnonzero(np.isin(role, ("query", "both")) & (in_gallery | (role == "query")))
        labelled = np.array([len(ls) > 0 for ls in table["labels"]], dtype=bool)
        unlabelled_queries = int((~labelled[candidates]).sum())
        candidates = candidates[labelled[candidates]]
        relevance = Relevance(table["labels"].tolist(), self.match, self.match_threshold)
        counts = relevance.counts(candidates, gallery) - in_gallery[candidates]  # leave-one-out
        no_relevant = int((counts == 0).sum())
        candidates, counts = candidates[counts > 0], counts[counts > 0]
        if self.n_queries is not None:
            if self.n_queries > len(candidates):
                raise UsageError(f"{what}: queries={self.n_queries} but only {len(candidates)} images can be "
                                 f"queries (labelled, with at least one relevant gallery image under match="
                                 f"{self._match_text()})")
            pick = np.sort(rng.choice(len(candidates), size=self.n_queries, replace=False))
            candidates, counts = candidates[pick], counts[pick]
        if len(candidates) == 0:
            raise DataError(f"{what}: no query has a relevant gallery image under match={self._match_text()} "
                            f"({no_relevant} without one, {unlabelled_queries} unlabelled): nothing to score")
        depth = len(gallery) - 1 if in_gallery[candidates].any() else len(gallery)
        if self.k > depth:
            raise UsageError(f"{what}: k = {self.k} (ks=) is larger than the gallery a query sees ({depth} "
                             f"image(s){', itself left out' if depth < len(gallery) else ''}); use smaller ks")
        used = np.union1d(gallery, candidates)  # sorted: id order
        check_files(table["path"].to_numpy()[used].tolist(), what=what, num_workers=num_workers)
        position = np.full(len(table), -1, dtype=np.int64)
        position[used] = np.arange(len(used))
        self.images = table.iloc[used][["id", "path"]].reset_index(drop=True)
        self.query_images = position[candidates]
        self.gallery_images = position[gallery]
        gallery_pos = np.full(len(table), -1, dtype=np.int64)
        gallery_pos[gallery] = np.arange(len(gallery))
        self.self_in_gallery = gallery_pos[candidates]
        self._labels = [table["labels"].iloc[i] for i in used]
        self._relevance = Relevance(self._labels, self.match, self.match_threshold)
        subsets = table["subset"].to_numpy()[candidates] if "subset" in table.columns else [ALL] * len(candidates)
        self._items = pd.DataFrame({
            "item": table["id"].to_numpy()[candidates].astype(str),
            "subset": np.asarray(subsets, dtype=object).astype(str),
            "label": ["|".join(table["labels"].iloc[i]) for i in candidates],
            "path": table["path"].to_numpy()[candidates].astype(str),
            "relevant": counts.astype(np.int64),
        })
        self._protocol = {
            **protocol,
            "kind": "retrieval",
            "images": len(used),
            "gallery": len(gallery),
            "queries": len(candidates),
            "queries_without_relevant": no_relevant,
            "unlabelled_query_candidates": unlabelled_queries,
            "ks": list(self.ks),
            "match": self._match_text(),
            "leave_one_out": "a query is never in its own gallery",
            "ties": "broken by image id (ascending); distances equal to 20 significant bits are ties",
            "measures": "recall@k, precision@k, map@k in %, mean over queries, bootstrap 95% CI over queries",
            "sampling": {"queries": self.n_queries, "gallery": self.n_gallery, "seed": seed},
            "per_class": self.per_class,
            "search": dict(self.search),
            "max_pairs": self.max_pairs,
            "resize": "per metric: its fixed input size when it has one, else "
                      f"{self.native_load[0]}x{self.native_load[0]} {self.native_load[1]} (task option size=)",
        }

    def protocol(self) -> dict[str, Any]:
        return dict(self._protocol)

    def _match_text(self) -> str:
        return self.match if self.match != "jaccard" else f"jaccard:{self.match_threshold:g}"

    def _checked_table(self, table: pd.DataFrame, what: str) -> pd.DataFrame:
        missing = [c for c in IMAGE_COLUMNS if c not in table.columns]
        if missing:
            raise DataError(f"{what}: the image table lacks column(s) {', '.join(missing)}")
        if len(table) == 0:
            raise DataError(f"{what}: no images found")
        table = table.copy()
        table["id"] = table["id"].astype(str)
        dup = table["id"][table["id"].duplicated()].unique().tolist()
        if dup:
            raise DataError(f"{what}: image ids must be unique; repeated: {listed(dup)}")
        if "role" in table.columns:
            bad = sorted(set(table["role"].astype(str)) - set(ROLES))
            if bad:
                raise DataError(f"{what}: column 'role' must be query, gallery or both; found {listed(bad)}")
            table["role"] = table["role"].astype(str)
        if "subset" in table.columns:
            table["subset"] = table["subset"].astype(str)
            if (table["subset"] == ALL).any():
                raise DataError(f"{what}: subset name {ALL!r} is reserved for the pooled record; rename it")
        return table.sort_values("id", kind="stable").reset_index(drop=True)

    # -- from a ranking to samples and records

    def ranking_columns(self, topk: np.ndarray, distances: np.ndarray) -> dict[str, Any]:
        """Sample columns from the ranking: ``topk`` (Q, K) gallery positions, best first, and their
        distances."""
        if self._relevance is None:
            raise RuntimeError("call prepare() first")
        topk = np.asarray(topk, dtype=np.int64)
        if topk.shape != (len(self.query_images), self.k):
            raise ValueError(f"ranking must be (queries, k) = ({len(self.query_images)}, {self.k}), got {topk.shape}")
        if (topk == self.self_in_gallery[:, None]).any():
            raise ValueError("a query was ranked in its own gallery (leave-one-out violated)")
        images = self.gallery_images[topk]
        hits = self._relevance.hits(self.query_images, images)
        measures = retrieval_measures(hits, self.items["relevant"].to_numpy(), self.ks)
        ids = self.images["id"].to_numpy()
        paths = self.images["path"].to_numpy()
        return {
            "topk_ids": [list(ids[row]) for row in images],
            "topk_paths": [list(paths[row]) for row in images],
            "topk_distances": [list(map(float, row)) for row in np.asarray(distances, dtype=np.float64)],
            "topk_hits": [list(map(bool, row)) for row in hits],
            **measures,
            "score": measures[self.measure],
        }

    def item_scores(self, samples: pd.DataFrame) -> np.ndarray:
        return samples[self.measure].to_numpy(dtype=np.float64)

    def _groups(self, samples: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        subsets = samples["subset"].astype(str).to_numpy()
        groups = [(s, subsets == s) for s in pd.unique(subsets)]
        if len(groups) > 1:
            groups.append((ALL, np.ones(len(samples), dtype=bool)))
        if self.per_class:
            labels = [set(str(v).split("|")) for v in samples["label"]]
            for name in sorted(set().union(*labels)):
                groups.append((CLASS_PREFIX + name, np.array([name in ls for ls in labels], dtype=bool)))
        return groups

    def score(self, samples: pd.DataFrame, *, seed: int = 0, n_boot: int = 1000) -> list[dict[str, Any]]:
        records = []
        for subset, mask in self._groups(samples):
            for measure in self.measures:
                vals = samples[measure].to_numpy(dtype=np.float64)[mask] * 100.0
                lo, hi = bootstrap_ci(vals, seed=seed, n_boot=n_boot)
                records.append({"subset": str(subset), "measure": measure, "value": float(vals.mean()),
                                "ci_low": lo, "ci_high": hi, "n": int(mask.sum())})
        return records

    def compare(self, a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                measure: str | None = None) -> dict[str, float]:
        col = measure or self.measure
        return paired_comparison(a[col].to_numpy(np.float64) * 100, b[col].to_numpy(np.float64) * 100,
                                 n_boot=n_boot, seed=seed)


def _optional_count(value: Any, name: str) -> int | None:
    if value in (None, "", "all"):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (or all), got {value!r}")
    return value


def relative_id(path: Path, root: Path) -> str:
    """An image's id: its path relative to the dataset root, with ``/`` separators."""
    return path.relative_to(root).as_posix()
