"""What a benchmark module declares about its data: :class:`Part` and :class:`DatasetSource`.

A :class:`DatasetSource` is the spec type of the dataset registry (:data:`percepbench.registry.DATASETS`):
each benchmark module of ``percepbench.tasks`` registers the source of its data beside its task specs (URLs,
parts and sizes, the expected layout, its verify rules), and a plugin can add one through the entry-point
group ``percepbench.datasets``. :mod:`percepbench.data` runs any source: it downloads, extracts, marks and
verifies the parts without knowing any dataset by name.

Standard library only (the registry imports this module).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from percepbench.errors import UsageError
from percepbench.specs import check_name

__all__ = ["URL_ENV_PREFIX", "DatasetSource", "Part", "Verifier"]

URL_ENV_PREFIX = "PERCEPBENCH_DATA_URL_"


@dataclass(frozen=True)
class Part:
    """One downloadable piece of a dataset.

    Attributes:
        name: id used with ``parts=`` (``"ref/000"``, ``"csv"``, ``"jnd"``).
        path: URL path under the dataset's base URL (``"nights_chunked/ref/000.zip"``).
        kind: ``"zip"``, ``"tar"`` (any compression), ``"zip_member"`` (one member of a remote zip, read
            with HTTP range requests) or ``"manual"`` (placed by hand; never downloaded).
        produces: paths under the dataset folder this part creates (folders, or files when they have a
            suffix), e.g. ``("ref/000",)``.
        size: archive size in bytes when known (checked after download).
        sha256: archive sha256 when known; otherwise recorded at the first download.
        member: for ``zip_member``: the member's name inside the remote zip.
        flat: the archive may hold the content of ``produces[0]`` at its top (no leading folders).
        approx: approximate size for people (``"1.1 GB"``).
    """

    name: str
    path: str
    kind: str
    produces: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    member: str | None = None
    flat: bool = False
    approx: str = ""

    @property
    def filename(self) -> str:
        """Local archive name: the URL path with ``/`` replaced (``nights_chunked-ref-000.zip``)."""
        return self.path.replace("/", "-")

    @property
    def marker_name(self) -> str:
        return self.name.replace("/", "-") + ".json"


#: ``verify(source, data_root, selected_parts, deep) -> problems``: one message per problem, each naming the
#: file or folder and ending with its fix (see :func:`percepbench.data.verify_dataset`).
Verifier = Callable[["DatasetSource", Path, "list[Part]", bool], "list[str]"]


@dataclass(frozen=True)
class DatasetSource:
    """Everything percepbench knows about getting and checking one dataset.

    Attributes:
        name: registry name (``nights``); also the folder name unless ``folder`` differs.
        title: name for people (``NIGHTS``), used in messages.
        folder: the dataset's folder under the data root.
        description, licence, citation, approx_size: shown by ``percepbench data list``.
        base_url: where the parts' ``path``s live; ``$PERCEPBENCH_DATA_URL_<NAME>`` replaces it.
        parts: every downloadable part, in download order.
        default_parts: the parts fetched and checked when none are named.
        verify: the dataset's :data:`Verifier`.
        groups: names that stand for several parts (``ref`` -> every ``ref/NNN`` chunk).
        parts_hint: appended to the list of known part names in an "unknown part" error.
        strip_prefixes: leading archive folders that extraction may find above ``produces`` paths.
        extraction: how the parts land in the folder (for people).
        layout: the files the tasks read, relative to the data root; the dataset module's one statement
            of it, which its task messages reuse.
        manual: for a dataset percepbench cannot fetch: the instructions (``str.format`` fields ``dest``,
            ``root`` and ``verify``), raised as :class:`~percepbench.data.ManualDownloadError`.
        default: registry default flag (unused by datasets; the registry needs it).
    """

    name: str
    title: str
    folder: str
    description: str
    licence: str
    citation: str
    approx_size: str
    base_url: str
    parts: tuple[Part, ...]
    default_parts: tuple[str, ...]
    verify: Verifier
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    parts_hint: str = ""
    strip_prefixes: tuple[str, ...] = ()
    extraction: str = ""
    layout: str = ""
    manual: str = ""
    default: bool = False

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))
        names = {p.name for p in self.parts}
        named = (*self.default_parts, *(n for group in self.groups.values() for n in group))
        unknown = [n for n in named if n not in names]
        if unknown:
            raise ValueError(f"dataset {self.name!r}: default_parts/groups name unknown parts {unknown[:5]}")

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)

    def select(self, parts: str | Iterable[str] | None = None) -> list[Part]:
        """The parts named by ``parts`` (part names or group names; a string may separate them with commas,
        ``+`` or spaces), in the source's order; the default parts when ``parts`` is None or empty.

        Raises:
            UsageError: an unknown part name, with "did you mean" and the known names.
        """
        if isinstance(parts, str):
            tokens = [t for t in re.split(r"[,+\s]+", parts) if t]
        else:
            tokens = [str(t).strip() for t in (parts or ()) if str(t).strip()]
        names = {p.name for p in self.parts}
        wanted: set[str] = set()
        for t in tokens or self.default_parts:
            if t in self.groups or t in names:
                wanted.update(self.groups.get(t, (t,)))
                continue
            known = sorted(self.groups) + [p.name for p in self.parts if "/" not in p.name]
            close = difflib.get_close_matches(t, [*self.groups, *names], n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"unknown {self.name} part {t!r}{hint} Known: {', '.join(known)}"
                             f"{self.parts_hint}")
        return [p for p in self.parts if p.name in wanted]

    def resolved_base_url(self) -> str:
        """``$PERCEPBENCH_DATA_URL_<NAME>`` when set (a mirror, or a test server), else :attr:`base_url`."""
        return os.environ.get(URL_ENV_PREFIX + self.name.upper(), "").strip() or self.base_url

    def url(self, part: Part) -> str:
        return self.resolved_base_url().rstrip("/") + "/" + part.path
