"""Local folders as a source: files under a root, in a fixed order, never outside it.

Hidden files are skipped and symlinks that point outside the root are refused; a FIFO or a
device named like an image cannot hang the worker (opened non-blocking, then checked).
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


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

    def list_objects(self) -> Iterator[SourceObject]:
        return _list_local(self)

    def read_object(self, obj: ObjectLike, max_bytes: int) -> bytes:
        return _read_local(self, obj, max_bytes)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob → regex on POSIX relative paths: ``**/`` = any folders, ``*``/``?`` within one."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            ch = pattern[i]
            out.append("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _list_local(spec: LocalSource) -> Iterator[SourceObject]:
    root = Path(spec.root)
    if not root.is_dir():
        raise SourceError(f"source folder {root} does not exist or is not a folder")
    regex = _glob_regex(spec.pattern)
    exts = spec.extensions
    # os.walk with sorted names streams in a fixed order without holding the whole tree.
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or (exts is not None and not name.lower().endswith(exts)):
                continue
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            if not regex.match(rel):
                continue
            if path.is_symlink() and not _inside(path.resolve(), root):
                log.warning("skipping %s: symlink points outside %s", path, root)
                continue
            try:
                st = path.stat()
            except OSError:
                continue  # vanished or dangling link: not an object
            yield SourceObject(path.as_uri(), st.st_size, str(st.st_mtime_ns))


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
