"""Read ahead in a background thread: image decoding overlaps the model's compute without worker processes.

With ``num_workers=0`` (the CPU default: worker processes would compete with the metric for the cores and
each pay for a copy of the dataset), a ``DataLoader`` decodes a batch only when the loop asks for it, so
the model waits for PIL. :func:`prefetched` runs the loader in one thread, ``depth`` batches ahead: PIL's
decoders and resizing release the GIL, so the next batch is decoded while torch computes this one. Errors
in the thread are raised in the caller, at the batch where they happened; leaving the loop early (an
exception in the caller, ``break``) stops the thread.

Reading ahead does not always pay. With DreamSim the model's work dwarfs the decoding and overlapping it
is free time; with a near-free metric there is nothing to overlap, and when the caller's own work holds
the GIL (Python bookkeeping, writing the embedding cache) the two threads take turns instead of running
together. On the 2-core EPYC the thread made a 20,000-triplet ``psnr`` run 4-16% slower and the embedding
phase of a 20,000-image retrieval run with a near-free metric 8-15% slower (interleaved A/B sets).
:func:`read_ahead` therefore times a few batches in the caller's thread and starts the thread only where
the caller's own work is many times the decoding (:data:`MIN_WORK_RATIO`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")

_DONE = object()
#: the name of the reading thread
THREAD_NAME = "percepbench-prefetch"


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Reader:
    """A thread taking items from ``source`` into a queue ``depth`` deep, until :meth:`stop`."""

    def __init__(self, source: Iterator[T], depth: int) -> None:
        self.source = source
        self.queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self.thread.start()

    def _put(self, value: object) -> bool:
        while not self.halt.is_set():
            try:
                self.queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self.source:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failed(exc))

    def get(self) -> object:
        return self.queue.get()

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(timeout=5)


def _unwrap(value: object) -> object:
    if isinstance(value, _Failed):
        raise value.exc
    return value


def prefetched(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield ``items`` in order, produced by a background thread up to ``depth`` items ahead."""
    if depth < 1:
        yield from items
        return
    reader = _Reader(iter(items), depth)
    try:
        while (value := _unwrap(reader.get())) is not _DONE:
            yield value  # type: ignore[misc]
    finally:
        reader.stop()


#: batches timed in the caller's thread (after one untimed warm-up batch) before :func:`read_ahead` decides
PROBE_BATCHES = 3
#: read ahead when the caller's own work per batch is at least this many times the time to produce one
MIN_WORK_RATIO = 10.0


def read_ahead(items: Iterable[T], depth: int = 1, probe: int = PROBE_BATCHES,
               min_ratio: float = MIN_WORK_RATIO) -> Iterator[T]:
    """Yield ``items`` in order; the first ``1 + probe`` are produced in the caller's thread, the last
    ``probe`` of them timed (producing each, and the caller's work between hand-overs); the rest come from
    :func:`prefetched`'s thread ``depth`` ahead if the caller's work was at least ``min_ratio`` times the
    producing, else from the caller's thread. ``depth < 1`` (DataLoader worker processes already read
    ahead): no thread, no timing.

    Why a ratio this high: where the caller's work dwarfs the decoding it is the metric's native compute,
    which releases the GIL, and overlapping the decoding is free time (DreamSim ``dino_vitb16``: 14x on
    768 px PNG files, 94x on 256 px). Below that, the work measured on the 2-core EPYC was Python
    bookkeeping or many small file writes, and the two threads took turns on the GIL instead of running
    together: with the thread, PSNR (0.24x) ran 4-16% slower and a retrieval loop writing the embedding
    cache (7.5x) 8-15% slower; SSIM on 64 px (8.6x) loses the 4% the thread gave it. Timing a few batches
    both ways was tried and misled: in that retrieval loop the thread's first batches looked 4-6% faster.
    """
    source = iter(items)
    if depth < 1 or probe < 1:
        yield from (prefetched(source, depth) if depth >= 1 else source)
        return
    yield from islice(source, 1)  # warm-up: first calls pay for lazy set-up
    producing = working = 0.0
    for _ in range(probe):
        t0 = time.perf_counter()
        try:
            item = next(source)
        except StopIteration:
            return
        t1 = time.perf_counter()
        producing += t1 - t0
        yield item
        working += time.perf_counter() - t1
    yield from (prefetched(source, depth) if working >= min_ratio * producing else source)
