"""The embedding matrix of one (task, metric) pair: rows written batch by batch, on disk or in memory.

A retrieval gallery of a million images does not fit in RAM as a Python list of arrays: the runner writes
each batch of embeddings straight into an ``.npy`` file opened with :func:`numpy.lib.format.open_memmap`
(the matrix is created when the first row reveals the embedding size), and the search reads it back in
chunks. The operating system keeps only the pages in use in memory, so a run's resident memory does not
grow with the gallery. Small item tasks keep the matrix in memory (``path=None``).

The file lives in a scratch folder inside the run directory (:data:`SCRATCH_DIR`); the runner removes it
once the pair is scored, and :func:`percepbench.rundir.remove_run_files` removes what an interrupted run
left there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

#: the scratch folder inside a run directory (embedding matrices of the pair at work)
SCRATCH_DIR = ".scratch"


class EmbeddingMatrix:
    """``rows`` x D float32 embeddings, filled row by row; ``path`` None keeps them in memory."""

    def __init__(self, rows: int, path: str | Path | None = None) -> None:
        self.rows = rows
        self.path = Path(path) if path is not None else None
        self.array: np.ndarray | None = None
        self.filled = np.zeros(rows, dtype=bool)

    def _create(self, dim: int) -> np.ndarray:
        if self.path is None:
            return np.empty((self.rows, dim), dtype=np.float32)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=(self.rows, dim))

    @property
    def dim(self) -> int | None:
        return None if self.array is None else int(self.array.shape[1])

    def put(self, index: np.ndarray | list[int], values: np.ndarray) -> None:
        """Write ``values`` (n, D) into rows ``index``; every row must have the first row's size D."""
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2:
            raise ValueError(f"embeddings must be (n, D), got shape {values.shape}")
        if self.array is None:
            self.array = self._create(values.shape[1])
        if values.shape[1] != self.array.shape[1]:
            raise RuntimeError(f"embeddings of different sizes: {self.array.shape[1]} and {values.shape[1]}")
        self.array[np.asarray(index)] = values
        self.filled[np.asarray(index)] = True

    def finish(self) -> np.ndarray:
        """The full matrix (a memory map when on disk), flushed; every row must have been written."""
        if not self.filled.all():
            raise RuntimeError(f"{int((~self.filled).sum())} of {self.rows} embedding rows were never written")
        if self.array is None:
            return np.zeros((0, 0), dtype=np.float32)
        if isinstance(self.array, np.memmap):
            self.array.flush()
            return np.load(self.path, mmap_mode="r")
        return self.array

    def close(self) -> None:
        """Drop the matrix and delete its file (and the scratch folder when it is left empty)."""
        self.array = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            folder = self.path.parent
            if folder.name == SCRATCH_DIR and folder.is_dir() and not any(folder.iterdir()):
                shutil.rmtree(folder, ignore_errors=True)
