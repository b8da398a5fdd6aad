"""Distributed evaluation: one ``percepbench run`` spread over the processes ``torchrun`` starts.

Launch::

    torchrun --nproc_per_node 4 -m percepbench.cli run -m dreamsim -t nights --out runs/nights
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr host0 --master_port 29500 \\
        -m percepbench.cli run ...          # on host0; the same with --node_rank 1 on host1

(with ``--master_addr``, global rank 0, the rank that writes, runs on node 0; with ``--rdzv_backend c10d``
any node may get it, so ``--out`` must then be on a disk every node sees).

The runner detects ``torchrun`` by ``WORLD_SIZE`` > 1 in the environment (no flag is needed) and
:func:`session` initialises ``torch.distributed`` with the ``gloo`` backend, on CUDA too (each process then
computes on ``cuda:LOCAL_RANK``): the ranks exchange only Python objects held on the CPU (distances,
embeddings, errors), which gloo carries over TCP without copies to the GPU, so one backend, the one the
tests run, serves every device. A caller that initialised ``torch.distributed`` itself (the Python API
inside a distributed job, with any backend) keeps its process group; :func:`session` only uses it.

Rules:

- **Every rank prepares the tasks and builds the metrics** (reading a CSV or generating seeded items is
  cheap, and each rank needs the items and the model anyway). That the ranks agree is checked: before the
  run they compare the (task, metric) pairs they can run (:func:`agree`: a node without some data or
  weights stops the run with exit code 2), and every sharded step sends rank 0 a digest of the item ids
  and of the metric's weights, so a rank that read other items or built other weights fails the pair with
  a message naming it.
- **Sharding by id** (:func:`shard_positions`): the ids (item ids for pairwise metrics, image paths for
  embedding metrics) are sorted and the k-th id in that order goes to rank ``k % world``; the order of the
  items in a file, and the positions, play no part. Each id is computed once, on one rank: no padding.
- **Gathering by id** (:func:`sharded`): each rank sends rank 0 its ids with their values; rank 0 puts each
  value at its id's place and checks that every id came exactly once. Only rank 0 holds the result.
- **Rank 0 alone writes**: it checks, creates and locks the run directory and tells the other ranks where it
  is and which pairs a ``--resume`` keeps (:func:`broadcast_from_main`; its errors, such as an ``--out``
  that already holds results, stop every rank), writes the results, samples and report, and prints the
  summary; the other ranks write nothing there and print no progress bars.
- **Failures**: an error on any rank while computing a shard is sent to rank 0 with the gathered values;
  the pair fails there as it would in one process (recorded in ``meta.failed`` with the rank and the
  error, exit code 1, or 2 for bad data) and the run goes on with the other pairs, as a single-process run
  does. A rank that dies (killed, out of memory) makes ``torchrun`` stop the other ranks and report the
  rank and its exit code; a rank that finds the others gone in a collective stops with :class:`RankLost`
  (rank 0 records it in ``meta.failed`` first). ``results.json`` holds the pairs finished before (it is
  written atomically).
- Collectives wait up to ``$PERCEPBENCH_DIST_TIMEOUT`` seconds (default :data:`DEFAULT_TIMEOUT_S`): the
  other ranks wait while rank 0 scores, writes and (for retrieval tasks, which are not sharded) ranks a
  gallery alone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from percepbench.errors import DataError, UsageError, WeightsError, user_message

#: How long a collective waits for the other ranks, in seconds (``$PERCEPBENCH_DIST_TIMEOUT`` overrides it)
DEFAULT_TIMEOUT_S = 7200


class RankFailed(RuntimeError):
    """Another rank failed while computing its shard (the message names the rank and its error)."""


class RankLost(RuntimeError):
    """A collective failed: another rank stopped (died, was killed) or cannot be reached. The run cannot go
    on; the runner records it and stops."""


def _collective(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, ValueError) as exc:  # gloo: "Connection closed by peer"; nccl: a timeout
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RankLost(f"rank {rank()} of {world_size()} lost the other ranks during {name} (one of them stopped or "
                       f"cannot be reached; torchrun names it and its exit code): {text}") from exc


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def active() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def rank() -> int:
    """This process's rank: of the process group when initialised, else ``$RANK`` under a launcher, else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def is_main() -> bool:
    """Rank 0 (always true in a single process): the rank that writes."""
    return rank() == 0


def rank_device(device: torch.device) -> torch.device:
    """``cuda`` without an index becomes ``cuda:LOCAL_RANK`` under a launcher; any other device is kept."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _timeout() -> _dt.timedelta:
    raw = os.environ.get("PERCEPBENCH_DIST_TIMEOUT", "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UsageError(f"PERCEPBENCH_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    return _dt.timedelta(seconds=seconds)


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """The device of this rank, with ``torch.distributed`` initialised for the ``with`` block when the process
    was started by a launcher (``WORLD_SIZE`` > 1) and nobody initialised it yet; the process group is
    destroyed at the end only when this function created it. In a single process: ``device``, nothing else."""
    if not launched() or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        yield rank_device(device)
        return
    if not torch.distributed.is_available():
        raise UsageError("this process was started by torchrun (WORLD_SIZE > 1) but this torch build has no "
                         "torch.distributed")
    device = rank_device(device)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"rank {os.environ.get('RANK', '?')}: device {device} asked for, but this machine has "
                             f"{count} CUDA device(s): start at most {count} processes per node (--nproc_per_node)")
        torch.cuda.set_device(device)  # also what an NCCL group of the caller's would need for object collectives
    try:
        torch.distributed.init_process_group("gloo", timeout=_timeout())
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"rank {os.environ.get('RANK', '?')}: cannot initialise torch.distributed (gloo): "
                         f"{exc}") from exc
    try:
        yield device
    finally:
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if active():
        _collective("a barrier", torch.distributed.barrier)


def id_keys(ids: Sequence[Any]) -> list[str]:
    """Each id as a string key, with ``#k`` appended to the k-th repeat of an id (k >= 1), so that keys are
    unique while ids usually are already."""
    seen: dict[str, int] = {}
    keys = []
    for i in ids:
        key = str(i)
        k = seen.get(key, 0)
        seen[key] = k + 1
        keys.append(key if k == 0 else f"{key}#{k}")
    return keys


def shard_positions(ids: Sequence[Any], rank: int, world: int) -> np.ndarray:
    """The positions in ``ids`` that rank ``rank`` of ``world`` computes, ascending.

    The keys (:func:`id_keys`) are sorted and the k-th in sorted order goes to rank ``k % world``: which
    rank gets an id depends on the set of ids only, never on their order; the shards are disjoint, cover
    every id and differ in size by at most one.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    keys = id_keys(ids)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return np.sort(np.asarray(order[rank::world], dtype=np.int64))


def shard_by_id(ids: Sequence[Any]) -> np.ndarray:
    """The positions in ``ids`` this rank computes (:func:`shard_positions`; all of them in one process)."""
    return shard_positions(ids, rank(), world_size())


def _digest(keys: Sequence[str], check: str) -> str:
    h = hashlib.sha256(check.encode())
    for key in keys:
        h.update(key.encode())
        h.update(b"\0")
    return h.hexdigest()


def _error_payload(exc: BaseException) -> dict[str, str]:
    kind = ("data" if isinstance(exc, DataError) else "usage" if isinstance(exc, UsageError) else
            "weights" if isinstance(exc, WeightsError) else "failure")
    return {"kind": kind, "type": type(exc).__name__, "message": user_message(exc)}


_ERROR_TYPES: dict[str, type[Exception]] = {"data": DataError, "usage": UsageError, "weights": WeightsError}


def gather_by_id(keys: list[str], mine: np.ndarray, values: dict[str, np.ndarray] | None, extra: Any = None,
                 *, error: BaseException | None = None, check: str = "", what: str = "items"
                 ) -> tuple[dict[str, np.ndarray], list[Any]] | None:
    """Gather on rank 0 the values each rank computed for its positions ``mine`` of ``keys`` (every rank
    passes the same ``keys``), and put each value at its key's place.

    ``values`` maps a column name to an array whose first axis follows ``mine``; ``extra`` is anything
    picklable (counts) returned per rank. A rank whose ``error`` is set sends it instead; after the
    gather every rank that failed raises its own error, and rank 0 raises the first other rank's error:
    :class:`DataError`/:class:`UsageError`/:class:`WeightsError` as such, anything else as
    :class:`RankFailed`, each as ``"rank R of W: Type: message"``. ``check`` is a string every rank must
    agree on (the metric's weights digest); a rank whose keys or ``check`` differ from rank 0's fails the
    gather. Returns ``(columns in the order of keys, [extra of rank 0, 1, ...])`` on rank 0, None elsewhere.
    """
    world = world_size()
    payload = {"rank": rank(), "digest": _digest(keys, check), "keys": [keys[i] for i in mine],
               "values": None if error is not None else values, "extra": extra,
               "error": None if error is None else _error_payload(error)}
    received: list[Any] = [None] * world if is_main() else []
    _collective("a gather", torch.distributed.gather_object, payload, received if is_main() else None, dst=0)
    if error is not None:
        raise error
    if not is_main():
        return None
    for p in received:
        if p["error"] is not None:
            e = p["error"]
            message = f"rank {p['rank']} of {world}: {e['type']}: {e['message']}"
            raise _ERROR_TYPES.get(e["kind"], RankFailed)(message)
    for p in received:
        if p["digest"] != payload["digest"]:
            raise RankFailed(f"rank {p['rank']} of {world} computed other {what} or with other weights than rank 0 "
                             "(every rank must read the same data and build the same metric: same files, same "
                             "weights, same percepbench)")
    index = {k: i for i, k in enumerate(keys)}
    columns: dict[str, np.ndarray] = {}
    seen = np.zeros(len(keys), dtype=np.int64)
    for p in received:
        rows = np.asarray([index[k] for k in p["keys"]], dtype=np.int64)
        seen[rows] += 1
        if not len(rows):  # an empty shard (fewer ids than ranks) sends nothing
            continue
        for name, arr in (p["values"] or {}).items():
            arr = np.asarray(arr)
            if len(arr) != len(rows):
                raise RankFailed(f"rank {p['rank']} of {world} sent {len(arr)} values of {name!r} for {len(rows)} "
                                 f"{what}")
            if name not in columns:
                columns[name] = np.zeros((len(keys), *arr.shape[1:]), dtype=arr.dtype)
            columns[name][rows] = arr
    if (seen != 1).any():
        bad = [keys[i] for i in np.flatnonzero(seen != 1)[:5]]
        raise RankFailed(f"gathering {what} by id: {int((seen != 1).sum())} of {len(keys)} came back "
                         f"{'never or more than once'} (first: {', '.join(bad)})")
    return columns, [p["extra"] for p in received]


def sharded(ids: Sequence[Any], compute: Callable[[np.ndarray], tuple[dict[str, np.ndarray], Any]], *,
            check: str = "", what: str = "items") -> tuple[dict[str, np.ndarray], list[Any]] | None:
    """``compute(positions)`` on this rank's shard of ``ids`` (:func:`shard_by_id`), gathered by id on rank 0
    (:func:`gather_by_id`). ``compute`` returns ``(columns, extra)``, each column's first axis following
    ``positions``. In a single process: ``compute`` on every position, ``(columns, [extra])``."""
    if not active():
        columns, extra = compute(np.arange(len(ids), dtype=np.int64))
        return columns, [extra]
    keys = id_keys(ids)
    mine = shard_by_id(ids)
    try:
        columns, extra = compute(mine)
    except Exception as exc:  # sent to rank 0 with the others' values, so that no rank waits for ever
        return gather_by_id(keys, mine, None, error=exc, check=check, what=what)
    return gather_by_id(keys, mine, columns, extra, check=check, what=what)


def agree(value: Any, what: str) -> None:
    """Check that every rank has the same ``value`` (picklable, comparable); else every rank raises a
    :class:`UsageError` naming the ranks that differ from rank 0 and ``what`` differs. Nothing in a single
    process."""
    if not active():
        return
    values: list[Any] = [None] * world_size()
    _collective("a check", torch.distributed.all_gather_object, values, value)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise UsageError(f"ranks {', '.join(map(str, differ))} of {world_size()} differ from rank 0 in {what}: "
                         f"{values[differ[0]]!r} there, {values[0]!r} on rank 0. Every rank must see the same data "
                         "and weights (on several nodes: the same files under the same paths)")


def broadcast_from_main(compute: Callable[[], Any]) -> Any:
    """``compute()`` on rank 0 and its value on every rank; an error on rank 0 is raised on every rank (the
    others raise it as ``"rank 0 of W: ..."`` with the same kind). In a single process: ``compute()``."""
    if not active():
        return compute()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = {"value": compute(), "error": None}
        except Exception as exc:
            _collective("a broadcast", torch.distributed.broadcast_object_list,
                        [{"value": None, "error": _error_payload(exc)}], src=0)
            raise
    _collective("a broadcast", torch.distributed.broadcast_object_list, box, src=0)
    if is_main():
        return box[0]["value"]
    if box[0]["error"] is not None:
        e = box[0]["error"]
        raise _ERROR_TYPES.get(e["kind"], RankFailed)(f"rank 0 of {world_size()}: {e['type']}: {e['message']}")
    return box[0]["value"]
