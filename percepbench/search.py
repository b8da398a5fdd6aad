"""Nearest-neighbour search over embeddings: exact by default (faiss or torch), IVF/HNSW on request.

:func:`search` returns, for every query, the ``k`` gallery rows with the smallest distance, **as the
metric's own** ``embedding_distance`` **computes it**, ties broken by gallery position (which the retrieval
tasks keep in image-id order), and never the query's own row (``exclude``). How:

1. **Candidates.** A fast search proposes ``k + 1 + margin`` rows per query. The embedding ``space`` says
   how the metric's distance maps onto an index: ``"cosine"`` (distance = 1 - cosine similarity: DreamSim
   with its centred, L2-normalised embeddings, the zero-shot backbones) is an inner product on L2-normalised
   vectors; ``"l2"`` (distance = Euclidean) is faiss' L2. The gallery is read in chunks of ``chunk_rows``
   rows (it may be a memory-mapped ``.npy`` far larger than RAM), each chunk searched exactly (faiss
   ``knn``, or a torch matrix product and ``topk``), and the chunks' candidates merged.
2. **Exact re-ranking.** The candidates' distances are recomputed with ``distance`` (the metric's
   ``embedding_distance``) and sorted by (distance, position); distances that agree to about 6 significant
   digits count as equal (:func:`tie_key`), so ties do not depend on float rounding. A query whose k-th exact distance is not
   clearly below the last candidate's search distance (``tol``) could have a tie or a better row outside
   the candidates (duplicated images do this): that query is ranked by brute force over the whole gallery
   with ``distance``. So exact search returns exactly the brute-force ranking of ``distance``.
3. **Approximate indexes** (``index="ivf"``: ``IndexIVFFlat``, ``nprobe`` lists probed; ``"hnsw"``:
   ``IndexHNSWFlat``, M = 32, ``ef_search``) hold the whole gallery in memory; their candidates are
   re-ranked the same way but never completed by brute force. Their **recall against exact search**
   (mean over up to ``recall_queries`` seeded queries of |top-k approx ∩ top-k exact| / k) is measured on
   every run and returned in ``info``.

Backends (``backend``): ``"faiss"`` (faiss-cpu; a faiss GPU build is used when the device is CUDA and the
build has GPUs), ``"torch"`` (matrix products on ``device``: the plain top-k baseline, and the fallback
for a ``space`` of None, which brute-forces ``distance`` itself), ``"auto"`` (default: faiss with GPU when
it can, torch on a CUDA device without faiss GPU support, else faiss on the CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

Space = Literal["cosine", "l2"] | None
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: candidates fetched beyond k (+1 for the query itself) before exact re-ranking
DEFAULT_MARGIN = 16
#: how far an exact distance may differ from the index's float32 distance
DEFAULT_TOL = 1e-4
#: gallery rows read per chunk (a chunk of 65,536 x 1,792 float32 is 470 MB)
DEFAULT_CHUNK_ROWS = 65_536
#: queries whose approximate results are checked against exact search
DEFAULT_RECALL_QUERIES = 1000


@dataclass
class SearchResult:
    """``positions`` (Q, k) gallery rows, best first; ``distances`` (Q, k) their ``distance`` values."""

    positions: np.ndarray
    distances: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def faiss_gpu_available() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _rows(matrix: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as a new float32 array of their own (never a view of a memory map)."""
    return np.array(matrix[start:stop], dtype=np.float32, copy=True, order="C")


def _normalised(x: np.ndarray) -> np.ndarray:
    """``x`` with each row scaled to unit L2 norm, in place (``x`` is a private copy)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, 1e-12)
    return x


#: query x gallery scores the torch backend computes at once: 64M floats, 256 MB
SCORE_FLOATS = 64_000_000
#: floats one re-ranking block may hold per tensor (the gathered gallery rows, the repeated queries): 32 MB
RERANK_FLOATS = 8_000_000


def _as_search_distance(values: np.ndarray, space: Space) -> np.ndarray:
    """faiss/torch scores -> the metric's distance units (cosine: 1 - similarity; l2: sqrt of squared L2)."""
    if space == "cosine":
        return 1.0 - values.astype(np.float64)
    return np.sqrt(np.maximum(values.astype(np.float64), 0.0))


#: distances that agree to this many significant bits (about 6 decimal digits) are ties, broken by position
TIE_BITS = 20


def tie_key(distances: np.ndarray) -> np.ndarray:
    """The sort key of distances: each rounded to :data:`TIE_BITS` significant bits.

    Two distances that are equal in exact arithmetic often differ in their last float bits (``(20 - 10) / 255``
    and ``(30 - 20) / 255`` in float32; a faiss inner product and a torch cosine; two CPUs' summation orders).
    Sorting on the rounded value makes those ties, broken by position (image id), so a ranking does not
    depend on the arithmetic path.

    >>> tie_key(np.array([0.1 + 2e-9, 0.1, 0.3])).tolist() == tie_key(np.array([0.1, 0.1, 0.3])).tolist()
    True
    """
    mantissa, exponent = np.frexp(np.asarray(distances, dtype=np.float64))
    scale = float(2 ** TIE_BITS)
    return np.ldexp(np.round(mantissa * scale) / scale, exponent)


def _merge(best_d: np.ndarray | None, best_i: np.ndarray | None, d: np.ndarray, i: np.ndarray, depth: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``depth`` smallest distances per row of two candidate lists (positions break ties)."""
    if best_d is None or best_i is None:
        all_d, all_i = d, i
    else:
        all_d, all_i = np.concatenate([best_d, d], axis=1), np.concatenate([best_i, i], axis=1)
    all_d = np.where(all_i < 0, np.inf, all_d)  # faiss pads with -1 when a chunk has fewer rows than depth
    order = np.lexsort((all_i, tie_key(all_d)), axis=1)[:, :depth]
    return np.take_along_axis(all_d, order, axis=1), np.take_along_axis(all_i, order, axis=1)


class _Candidates:
    """Chunked exact candidate search with faiss or torch."""

    def __init__(self, space: Space, backend: str, device: torch.device) -> None:
        self.space, self.backend, self.device = space, backend, device
        self.gpu_res = None
        if backend == "faiss-gpu":
            import faiss

            self.gpu_res = faiss.StandardGpuResources()

    def chunk(self, xq: np.ndarray, xb: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, chunk-local indices) of the ``depth`` nearest rows of ``xb`` for each row of ``xq``."""
        depth = min(depth, xb.shape[0])
        if self.backend.startswith("faiss"):
            import faiss

            metric = faiss.METRIC_INNER_PRODUCT if self.space == "cosine" else faiss.METRIC_L2
            if self.gpu_res is not None:
                d, i = faiss.knn_gpu(self.gpu_res, xq, xb, depth, metric=metric)
            else:
                d, i = faiss.knn(xq, xb, depth, metric=metric)
            return _as_search_distance(d, self.space), i.astype(np.int64)
        b = torch.from_numpy(xb).to(self.device)
        values, indices = [], []
        step = max(1, SCORE_FLOATS // max(1, xb.shape[0]))  # a (step, chunk) score matrix at a time
        for s in range(0, xq.shape[0], step):
            q = torch.from_numpy(xq[s:s + step]).to(self.device)
            if self.space == "cosine":
                top = torch.topk(q @ b.T, depth, dim=1, largest=True, sorted=True)
            else:
                top = torch.topk(torch.cdist(q, b).square(), depth, dim=1, largest=False, sorted=True)
            values.append(top.values.float().cpu().numpy())
            indices.append(top.indices.cpu().numpy())
        return _as_search_distance(np.concatenate(values), self.space), np.concatenate(indices)


def _resolve_backend(backend: str, space: Space, device: torch.device) -> str:
    if space is None:
        return "torch"
    if backend == "auto":
        if device.type == "cuda":
            return "faiss-gpu" if faiss_gpu_available() else "torch"
        backend = "faiss"
    if backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError as exc:
            raise ImportError("backend 'faiss' needs the faiss-cpu package: pip install faiss-cpu") from exc
        return "faiss-gpu" if device.type == "cuda" and faiss_gpu_available() else "faiss"
    if backend != "torch":
        raise ValueError(f"backend must be auto, faiss or torch, got {backend!r}")
    return "torch"


def _exact_distances(queries: Any, gallery: Any, q_rows: np.ndarray, g_rows: np.ndarray, distance: DistanceFn,
                     device: torch.device) -> np.ndarray:
    """``distance(queries[q_rows[i]], gallery[g_rows[i, j]])`` for every (i, j), float64 (Q, K)."""
    n, depth = g_rows.shape
    out = np.empty((n, depth), dtype=np.float64)
    dim = np.asarray(gallery[0:1]).shape[1] if len(gallery) else 1
    step = max(1, RERANK_FLOATS // max(1, depth * dim))  # bounded in bytes, whatever the number of queries
    for s in range(0, n, step):
        qs = torch.from_numpy(np.asarray(queries[q_rows[s:s + step]], dtype=np.float32))
        flat = g_rows[s:s + step].reshape(-1)
        uniq, inverse = np.unique(flat, return_inverse=True)
        gs = torch.from_numpy(np.asarray(gallery[uniq], dtype=np.float32))[torch.from_numpy(inverse)]
        a = qs.repeat_interleave(depth, dim=0).to(device)
        with torch.inference_mode():
            d = distance(a, gs.to(device)).float().reshape(-1).cpu().numpy()
        out[s:s + step] = d.reshape(-1, depth)
    return out


def brute_force(queries: Any, gallery: Any, k: int, distance: DistanceFn, *, exclude: np.ndarray | None = None,
                device: torch.device | None = None, chunk_rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by evaluating ``distance`` on every (query, gallery row): the reference ranking.

    Ties are broken by gallery position; ``exclude[q]`` (a position, or -1) is never returned.
    """
    device = device or torch.device("cpu")
    nq, ng = len(queries), len(gallery)
    exclude = np.full(nq, -1, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    best_d: np.ndarray | None = None
    best_i: np.ndarray | None = None
    dim = np.asarray(queries[0:1]).shape[1]
    q_block = max(1, min(nq, 4_000_000 // max(1, dim * min(chunk_rows, ng))))
    for gs in range(0, ng, chunk_rows):
        xb = torch.from_numpy(_rows(gallery, gs, min(ng, gs + chunk_rows))).to(device)
        n = xb.shape[0]
        ds, is_ = [], []
        for qs in range(0, nq, q_block):
            xq = torch.from_numpy(_rows(queries, qs, min(nq, qs + q_block))).to(device)
            b = xq.shape[0]
            with torch.inference_mode():
                d = distance(xq.repeat_interleave(n, dim=0), xb.repeat(b, 1)).float().reshape(b, n).cpu().numpy()
            ds.append(d.astype(np.float64))
            is_.append(np.broadcast_to(np.arange(gs, gs + n), (b, n)))
        d, i = np.concatenate(ds), np.concatenate(is_)
        d = np.where(i == exclude[:, None], np.inf, d)
        best_d, best_i = _merge(best_d, best_i, d, i, k)
    assert best_d is not None and best_i is not None
    return best_i, best_d


def _build_index(gallery: Any, space: Space, index: str, nprobe: int, ef_search: int, chunk_rows: int,
                 seed: int) -> Any:
    import faiss

    ng = len(gallery)
    dim = np.asarray(gallery[0:1]).shape[1]
    metric = faiss.METRIC_INNER_PRODUCT if space == "cosine" else faiss.METRIC_L2

    def rows(s: int, e: int) -> np.ndarray:
        x = _rows(gallery, s, e)
        return _normalised(x) if space == "cosine" else x

    if index == "hnsw":
        idx = faiss.IndexHNSWFlat(dim, 32, metric)
        idx.hnsw.efSearch = ef_search
    else:
        nlist = max(1, min(int(4 * math.sqrt(ng)), ng // 39 or 1))
        quantizer = faiss.IndexFlatIP(dim) if space == "cosine" else faiss.IndexFlatL2(dim)
        idx = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        rng = np.random.default_rng(seed)
        train_n = min(ng, max(39 * nlist, 10_000))
        pick = np.sort(rng.choice(ng, size=train_n, replace=False))
        train = np.array(gallery[pick], dtype=np.float32, copy=True, order="C")
        idx.train(_normalised(train) if space == "cosine" else train)
        idx.nprobe = min(nprobe, nlist)
    for s in range(0, ng, chunk_rows):
        idx.add(rows(s, min(ng, s + chunk_rows)))
    return idx


def search(queries: Any, gallery: Any, k: int, *, distance: DistanceFn, space: Space = "cosine",
           exclude: np.ndarray | None = None, backend: str = "auto", index: str = "exact", nprobe: int = 16,
           ef_search: int = 128, device: torch.device | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
           query_block: int = 16_384, margin: int = DEFAULT_MARGIN, tol: float = DEFAULT_TOL,
           recall_queries: int = DEFAULT_RECALL_QUERIES, seed: int = 0, progress: bool = False,
           desc: str = "search") -> SearchResult:
    """The ``k`` nearest gallery rows of every query under ``distance`` (see the module docstring).

    ``queries`` (Q, D) and ``gallery`` (G, D) are arrays or memory-mapped ``.npy`` files; ``exclude`` (Q,)
    holds each query's own gallery row (leave-one-out) or -1. ``info`` reports the backend, index, the
    candidate depth, how many queries needed brute force, timings and (approximate indexes) the recall
    against exact search.
    """
    device = device or torch.device("cpu")
    nq, ng = len(queries), len(gallery)
    exclude = np.full(nq, -1, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    available = ng - 1 if (exclude >= 0).any() else ng
    if k > available:
        raise ValueError(f"k = {k} is larger than the gallery a query sees ({available} rows)")
    if index not in ("exact", "ivf", "hnsw"):
        raise ValueError(f"index must be exact, ivf or hnsw, got {index!r}")
    t0 = time.perf_counter()
    if space is None:
        if index != "exact":
            raise ValueError("an approximate index needs a cosine or l2 embedding space")
        positions, dists = brute_force(queries, gallery, k, distance, exclude=exclude, device=device)
        return SearchResult(positions, dists, {"backend": "torch (brute force of the metric's distance)",
                                               "index": "exact", "queries": nq, "gallery": ng,
                                               "seconds": round(time.perf_counter() - t0, 6)})
    resolved = _resolve_backend(backend, space, device)
    if index != "exact" and not resolved.startswith("faiss"):
        resolved = "faiss"
    depth = min(ng, k + 1 + margin)
    cand_d = np.empty((nq, depth), dtype=np.float64)
    cand_i = np.empty((nq, depth), dtype=np.int64)
    info: dict[str, Any] = {"backend": resolved, "index": index, "queries": nq, "gallery": ng, "k": k,
                            "candidates": depth, "space": space}
    if index == "exact":
        finder = _Candidates(space, resolved, device)
        bar = tqdm(total=nq * math.ceil(ng / chunk_rows), desc=desc, unit="query", disable=not progress,
                   leave=False, unit_scale=True)
        for qs in range(0, nq, query_block):
            xq = _rows(queries, qs, min(nq, qs + query_block))
            if space == "cosine":
                xq = _normalised(xq)
            best_d = best_i = None
            for gs in range(0, ng, chunk_rows):
                xb = _rows(gallery, gs, min(ng, gs + chunk_rows))
                if space == "cosine":
                    xb = _normalised(xb)
                d, i = finder.chunk(xq, xb, depth)
                best_d, best_i = _merge(best_d, best_i, d, np.where(i >= 0, i + gs, -1), depth)
                bar.update(xq.shape[0])
            cand_d[qs:qs + xq.shape[0]], cand_i[qs:qs + xq.shape[0]] = best_d, best_i
        bar.close()
    else:
        t_build = time.perf_counter()
        idx = _build_index(gallery, space, index, nprobe, ef_search, chunk_rows, seed)
        info["build_seconds"] = round(time.perf_counter() - t_build, 6)
        info.update({"nprobe": nprobe} if index == "ivf" else {"ef_search": ef_search, "hnsw_m": 32})
        if index == "ivf":
            info["nlist"] = int(idx.nlist)
        for qs in range(0, nq, query_block):
            xq = _rows(queries, qs, min(nq, qs + query_block))
            if space == "cosine":
                xq = _normalised(xq)
            d, i = idx.search(xq, depth)
            cand_d[qs:qs + len(xq)] = np.where(i >= 0, _as_search_distance(d, space), np.inf)
            cand_i[qs:qs + len(xq)] = i
    info["search_seconds"] = round(time.perf_counter() - t0, 6)

    # exact re-ranking of the candidates with the metric's own distance; ties by position
    valid = cand_i >= 0
    safe_i = np.where(valid, cand_i, 0)
    exact = _exact_distances(queries, gallery, np.arange(nq), safe_i, distance, device)
    exact = np.where(valid & (cand_i != exclude[:, None]), exact, np.inf)
    order = np.lexsort((np.where(valid, cand_i, np.iinfo(np.int64).max), tie_key(exact)), axis=1)
    ranked_i = np.take_along_axis(cand_i, order, axis=1)[:, :k]
    ranked_d = np.take_along_axis(exact, order, axis=1)[:, :k]
    brute = np.zeros(nq, dtype=bool)
    if index == "exact":
        if depth < ng:
            last = np.where(valid, cand_d, -np.inf).max(axis=1)
            kth = ranked_d[:, -1]
            brute = ~((tie_key(kth) < tie_key(last)) & (kth < last - tol * np.maximum(1.0, np.abs(last))))
        brute |= ~np.isfinite(ranked_d).all(axis=1)
        rows = np.flatnonzero(brute)
        if rows.size:
            bf_i, bf_d = brute_force(_Subset(queries, rows), gallery, k, distance, exclude=exclude[rows], device=device)
            ranked_i[rows], ranked_d[rows] = bf_i, bf_d
    info["brute_force_queries"] = int(brute.sum())
    if index != "exact":
        info["recall_vs_exact"] = _recall_vs_exact(queries, gallery, k, ranked_i, distance=distance, space=space,
                                                   exclude=exclude, backend=backend, device=device,
                                                   chunk_rows=chunk_rows, n=recall_queries, seed=seed)
    info["seconds"] = round(time.perf_counter() - t0, 6)
    return SearchResult(ranked_i, ranked_d, info)


class _Subset:
    """Rows ``rows`` of a (memory-mapped) matrix, sliced like an array."""

    def __init__(self, matrix: Any, rows: np.ndarray) -> None:
        self.matrix, self.rows = matrix, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.matrix[self.rows[key]])


def _recall_vs_exact(queries: Any, gallery: Any, k: int, approx: np.ndarray, *, distance: DistanceFn, space: Space,
                     exclude: np.ndarray, backend: str, device: torch.device, chunk_rows: int, n: int,
                     seed: int) -> dict[str, Any]:
    nq = len(queries)
    rows = np.arange(nq) if nq <= n else np.sort(np.random.default_rng(seed).choice(nq, size=n, replace=False))
    exact = search(_Subset(queries, rows), gallery, k, distance=distance, space=space, exclude=exclude[rows],
                   backend=backend, device=device, chunk_rows=chunk_rows)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(approx[rows], exact.positions, strict=True)]
    return {"k": k, "value": float(np.mean(overlap)), "queries_checked": len(rows)}
