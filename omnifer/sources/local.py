"""Local folders as a source: files under a root, in a fixed order, never outside it.

Every file is listed whatever its name, except system junk and ``exclude``d paths (one rule:
:mod:`omnifer.storage.ignore`); odd entries are counted, never raised
(:class:`~omnifer.sources.listing.ListingReport`). Symlinks that point outside the root are
refused; a FIFO or a device named like an image cannot hang the worker (opened non-blocking,
then checked).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import unquote_to_bytes, urlsplit

from pydantic import field_validator

from omnifer.errors import SourceError
from omnifer.sources.base import FetchError, ListedSource, ObjectLike, SourceObject, too_large
from omnifer.sources.listing import ListingReport
from omnifer.storage.ignore import glob_regex, ignored_name, is_excluded


class LocalSource(ListedSource):
    """Files under ``root`` whose relative POSIX path matches ``pattern`` (glob: ``*`` stays
    within one folder, ``**/`` spans any number of folders) and whose suffix is in
    ``extensions`` (None: any)."""

    kind: Literal["local"] = "local"
    root: str
    pattern: str = "**/*"

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return str(Path(value).expanduser().resolve())

    def __str__(self) -> str:
        return Path(self.root).as_uri()

    def scan(self, report: ListingReport) -> Iterator[SourceObject]:
        return _list_local(self, report)

    def relative_path(self, uri: str) -> str:
        path = _local_path(uri)
        try:
            return path.relative_to(Path(self.root)).as_posix()
        except ValueError:
            return path.as_posix()

    def read_object(self, obj: ObjectLike, max_bytes: int) -> bytes:
        return _read_local(self, obj, max_bytes)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _list_local(spec: LocalSource, report: ListingReport) -> Iterator[SourceObject]:
    """Walk ``spec.root`` depth-first, names sorted: a folder's files, then its sub-folders.

    Nothing met on the way raises (see :class:`~omnifer.sources.listing.ListingReport` for
    what is counted): a folder that cannot be read, a dangling symlink, an entry that vanished
    between the folder's listing and its ``stat``, a symlink out of the root. Symlinked
    folders are not followed (no cycles, no escapes). FIFOs, sockets and devices are listed
    (their row says ``unreadable: not a regular file``); names need not be UTF-8.
    """
    root = Path(spec.root)
    if not root.is_dir():
        raise SourceError(f"source folder {root} does not exist or is not a folder")
    regex = glob_regex(spec.pattern)
    stack = [""]  # folders still to list, relative to root
    while stack:
        rel_dir = stack.pop()
        folder = root / rel_dir if rel_dir else root
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not rel_dir:  # the source itself: nothing to list at all is the run's error
                raise SourceError(f"cannot list source folder {root}: "
                                  f"{exc.strerror or exc}") from None
            if isinstance(exc, FileNotFoundError):
                report.skip(rel_dir, "vanished", "folder gone while listing")
            else:
                report.skip(rel_dir, "unlistable_folder", exc.strerror or str(exc))
            continue
        subfolders: list[str] = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError as exc:
                report.skip(rel, "unreadable_entry", exc.strerror or str(exc))
                continue
            reason = ignored_name(entry.name, folder=is_dir)
            if reason is not None:
                report.ignore(rel + ("/" if is_dir else ""), reason)
                continue
            if is_dir:
                rule = is_excluded(rel + "/", spec.exclude)
                if rule is not None:
                    report.exclude(rel + "/", rule)
                else:
                    subfolders.append(rel)
                continue
            obj = _local_object(spec, root, Path(entry.path), rel, is_link, regex, report)
            if obj is not None:
                yield obj
        stack.extend(reversed(subfolders))


def _local_object(spec: LocalSource, root: Path, path: Path, rel: str, is_link: bool,
                  regex: re.Pattern[str], report: ListingReport) -> SourceObject | None:
    """The object for one non-folder entry, or None (counted in ``report``)."""
    exts = spec.extensions
    rule = is_excluded(rel, spec.exclude)
    if rule is None and not regex.match(rel):
        rule = "pattern"
    if rule is None and exts is not None and not rel.lower().endswith(exts):
        rule = "extensions"
    if rule is not None:
        report.exclude(rel, rule)
        return None
    try:
        st = path.stat()  # follows a symlink
    except FileNotFoundError:
        if is_link:
            report.skip(rel, "dangling_symlink", f"points to {os.readlink(path)!r}"
                        if os.path.islink(path) else "")
        else:
            report.skip(rel, "vanished", "gone between listing and stat")
        return None
    except OSError as exc:  # a symlink loop, permissions on the target's folder
        report.skip(rel, "unreadable_entry", exc.strerror or str(exc))
        return None
    if is_link:
        if not _inside(path.resolve(), root):
            report.skip(rel, "symlink_outside_root", f"points outside {root}")
            return None
        if stat.S_ISDIR(st.st_mode):
            report.skip(rel, "symlinked_folder", "symlinked folders are not followed")
            return None
    return SourceObject(path.as_uri(), st.st_size, str(st.st_mtime_ns))


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        # Path.as_uri() percent-encodes the file system's bytes, so decode back to bytes:
        # a non-UTF-8 name (latin-1 "caf\xe9.jpg") must name the same file again.
        return Path(os.fsdecode(unquote_to_bytes(urlsplit(uri).path)))
    return Path(uri)


def _read_local(spec: LocalSource, obj: ObjectLike, max_bytes: int) -> bytes:
    root = Path(spec.root)
    path = _local_path(obj.uri)
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise FetchError("missing", f"{obj.uri}: no such file") from None
    except OSError as exc:
        raise FetchError("unreadable", f"{obj.uri}: {exc.strerror or exc}") from None
    if not _inside(Path(os.path.abspath(path)), root) or not _inside(real, root):
        raise FetchError("forbidden_url", f"{obj.uri} is outside the source folder {root}")
    try:
        # O_NONBLOCK: a FIFO or device named x.jpg must not hang the worker on open().
        with open(os.open(real, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise FetchError("unreadable", f"{obj.uri}: not a regular file")
            if st.st_size > max_bytes:
                raise too_large(obj.uri, st.st_size, max_bytes)
            data = fh.read(max_bytes + 1)
    except FetchError:
        raise
    except FileNotFoundError:
        raise FetchError("missing", f"{obj.uri}: no such file") from None
    except OSError as exc:  # permissions, a folder, I/O errors
        raise FetchError("unreadable", f"{obj.uri}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # grew since stat
        raise too_large(obj.uri, None, max_bytes)
    return data
