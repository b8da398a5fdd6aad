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
phase of a 20,000-image retrieval run with a near-free metric 15% slower in one A/B set (14.1 s against
12.2 s, medians of 3; a second set on the noisier machine was even). Which case a loop is in cannot be read
off the metric, so :func:`read_ahead` measures it: a few batches in the caller's thread, a few with the
thread, and it keeps the thread only when it was faster by :data:`MIN_GAIN`. For loops near the
break-even point the choice is within the timing noise either way.
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
    """A thread taking items from ``source`` into a queue ``depth`` deep; :meth:`stop` ends it and hands back,
    in order, whatever it had already taken from ``source`` (so the caller can go on with ``source`` itself)."""

    def __init__(self, source: Iterator[T], depth: int) -> None:
        self.source = source
        self.queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self.halt = threading.Event()
        self.held: list[object] = []  # taken from the source when asked to stop, not queued
        self.thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self.thread.start()

    def _put(self, value: object) -> bool:
        while not self.halt.is_set():
            try:
                self.queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        self.held.append(value)
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

    def stop(self, wait: bool = True) -> list[object]:
        """End the thread; with ``wait``, after it finishes the item it is reading, and return the items (or
        the end / failure markers) it took and the caller has not had, in order."""
        self.halt.set()
        self.thread.join(timeout=None if wait else 5)
        left = []
        while True:
            try:
                left.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return left + self.held


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
        reader.stop(wait=False)


#: batches timed each way (in the caller's thread, then with the thread) before :func:`read_ahead` decides
PROBE_BATCHES = 3
#: the thread stays only if it saves at least this share of an item's time: below it, the difference is
#: within the noise of a few timed batches, and the caller's thread alone is the simpler way to run. Kept
#: low because what is at stake is asymmetric: DreamSim runs take hours and the thread saves them the
#: decoding (7% of an image's time at 768 px where a core is free for it; +1.6% measured on 2 cores, where
#: the decoding competes with torch's threads), while the loops it slows are cheap ones
MIN_GAIN = 0.02


def read_ahead(items: Iterable[T], depth: int = 1, probe: int = PROBE_BATCHES,
               min_gain: float = MIN_GAIN) -> Iterator[T]:
    """Yield ``items`` in order, each produced either in the caller's thread or by :func:`prefetched`'s
    thread ``depth`` ahead, whichever turns out faster here.

    The first item is produced in the caller's thread untimed (warm-up), the next ``probe`` too, timed from
    one hand-over to the next (so the caller's work on each is included); then the thread starts, its first
    item untimed (nothing was read ahead yet), the next ``probe`` timed the same way. Unless the thread saved
    at least ``min_gain`` of the time per item, it is stopped, the items it had read are yielded, and the
    rest is produced in the caller's thread. ``depth < 1`` (DataLoader worker processes already read ahead):
    no thread, no timing.
    """
    source = iter(items)
    if depth < 1 or probe < 1:
        yield from (prefetched(source, depth) if depth >= 1 else source)
        return
    yield from islice(source, 1)
    t0, inline = time.perf_counter(), 0
    for item in islice(source, probe):
        yield item
        inline += 1
    if inline < probe:
        return
    per_item_inline = (time.perf_counter() - t0) / probe
    reader = _Reader(source, depth)
    try:
        seen, t1 = 0, 0.0
        while seen < probe + 1:
            value = _unwrap(reader.get())
            if value is _DONE:
                return
            yield value  # type: ignore[misc]
            seen += 1
            if seen == 1:
                t1 = time.perf_counter()  # from the first hand-over on, the reads overlap the caller's work
        if (time.perf_counter() - t1) / probe <= (1.0 - min_gain) * per_item_inline:
            while (value := _unwrap(reader.get())) is not _DONE:
                yield value  # type: ignore[misc]
            return
        for value in reader.stop(wait=True):
            if _unwrap(value) is _DONE:
                return
            yield value  # type: ignore[misc]
        yield from source
    finally:
        reader.stop(wait=False)
