"""Read ahead in a background thread: image decoding overlaps the model's compute without worker processes.

With ``num_workers=0`` (the CPU default: worker processes would compete with the metric for the cores and
each pay for a copy of the dataset), a ``DataLoader`` decodes a batch only when the loop asks for it, so
the model waits for PIL. :func:`prefetched` runs the loader in one thread, ``depth`` batches ahead: PIL's
decoders and resizing release the GIL, so the next batch is decoded while torch computes this one. Errors
in the thread are raised in the caller, at the batch where they happened; leaving the loop early (an
exception in the caller, ``break``) stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield ``items`` in order, produced by a background thread up to ``depth`` items ahead."""
    if depth < 1:
        yield from items
        return
    ahead: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: object) -> bool:
        while not stop.is_set():
            try:
                ahead.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))

    thread = threading.Thread(target=produce, name="percepbench-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = ahead.get()
            if value is _DONE:
                return
            if isinstance(value, _Failed):
                raise value.exc
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)
