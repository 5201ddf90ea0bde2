"""Which listed entries are system junk, and which a user excluded: one rule for every reader.

The crawler (local folders, S3 prefixes, URL manifests) and every labeled-data reader that
walks folders ask the same two questions here, so a file that is junk to one is junk to all:

* :func:`is_ignored` — system junk that is never a photo, a class or a face: hidden entries
  (any name starting with ``.``, which covers macOS ``._name`` AppleDouble companions,
  ``.DS_Store``, ``.ipynb_checkpoints/``, ``.Trashes/``, ``.thumbnails/``), and the
  well-known junk of other systems (:data:`JUNK_FOLDERS`, :data:`JUNK_FILES`): macOS zip
  resource forks ``__MACOSX/``, Synology ``@eaDir/`` thumbnails and ``#recycle/``, QNAP
  ``@Recycle/``, Windows ``Thumbs.db``, ``desktop.ini``, ``$RECYCLE.BIN/``, ...
  Names are compared case-insensitively (Windows and macOS file systems are).
* :func:`is_excluded` — the source's own ``exclude`` globs (a source option in config, see
  :func:`omnifer.sources.parse_source`). Glob rules, case-insensitive, on the POSIX path
  relative to the source root (S3: the key after the prefix; URLs: ``host/path``):
  a pattern without ``/`` matches any single file or folder name (``*.mov``, ``drafts``);
  one ending in ``/`` matches folders only (``tmp/``); one with a ``/`` inside is anchored
  at the root (``2019/raw/**``, ``exports/*.png``). ``*`` and ``?`` stay within one name,
  ``**`` spans folders. A matching folder excludes everything under it.

Why names and not content: junk such as an AppleDouble file can be a few hundred bytes of
resource fork *or* a valid thumbnail of the photo beside it; either way it is not a second
photo, and reading it only adds rows, classes or duplicate faces.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

JUNK_FOLDERS: dict[str, str] = {
    "__macosx": "macOS zip resource forks",
    "@eadir": "Synology thumbnails",
    "#recycle": "Synology recycle bin",
    "#snapshot": "Synology snapshots",
    "@recycle": "QNAP recycle bin",
    "@recently-snapshot": "QNAP snapshots",
    "$recycle.bin": "Windows recycle bin",
    "system volume information": "Windows system folder",
    "lost+found": "file-system recovery folder",
}
"""Folder names (lower case) that only systems make, with why they are skipped."""

JUNK_FILES: dict[str, str] = {
    "thumbs.db": "Windows thumbnail cache",
    "ehthumbs.db": "Windows thumbnail cache",
    "ehthumbs_vista.db": "Windows thumbnail cache",
    "desktop.ini": "Windows folder settings",
    "picasa.ini": "Picasa folder settings",
    "zbthumbnail.info": "ZoomBrowser thumbnail cache",
    "icon\r": "macOS folder icon",
}
"""File names (lower case) that only systems make, with why they are skipped."""

_HIDDEN_REASONS: dict[str, str] = {
    ".ds_store": "macOS folder metadata",
    ".ipynb_checkpoints": "Jupyter checkpoints",
    ".trashes": "macOS trash",
    ".spotlight-v100": "macOS search index",
    ".fseventsd": "macOS file-system events",
    ".appledouble": "macOS resource forks",
}


def ignored_name(name: str, folder: bool) -> str | None:
    """Why the entry ``name`` (one path component) is junk, or None when it is not.

    ``folder``: the entry is a folder (folder-only names like ``@eaDir`` then apply)."""
    lower = name.lower()
    if name.startswith("._"):
        return "AppleDouble companion (macOS resource fork)"
    if name.startswith("."):
        return _HIDDEN_REASONS.get(lower, "hidden entry")
    if folder:
        return JUNK_FOLDERS.get(lower)
    return JUNK_FILES.get(lower)


def is_ignored(relative_path: str) -> str | None:
    """Why ``relative_path`` (POSIX, relative to the source root) is system junk, else None.

    Every folder on the way counts: ``a/@eaDir/b.jpg`` and ``a/.cache/b.jpg`` are ignored.
    A trailing ``/`` marks the path itself as a folder."""
    is_folder = relative_path.endswith("/")
    parts = [p for p in relative_path.split("/") if p and p != "."]
    for i, part in enumerate(parts):
        reason = ignored_name(part, folder=is_folder or i < len(parts) - 1)
        if reason is not None:
            return reason
    return None


# -- user exclude globs ----------------------------------------------------------------------
def glob_regex(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """Glob → regex on POSIX relative paths: ``**/`` = any folders, ``**`` = anything,
    ``*``/``?`` within one name, ``[...]`` a character class; the whole path must match."""
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
            if ch == "[" and "]" in pattern[i + 2 :]:
                end = pattern.index("]", i + 2)
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                i = end + 1
                continue
            out.append("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch))
            i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE if ignore_case else 0)


def check_globs(patterns: Iterable[str]) -> tuple[str, ...]:
    """Validated exclude globs (stripped, non-empty, no ``..``); ValueError otherwise."""
    out = []
    for raw in patterns:
        pattern = str(raw).strip()
        if not pattern or pattern in ("/", "./"):
            raise ValueError(f"empty exclude pattern {raw!r}")
        if ".." in pattern.split("/"):
            raise ValueError(f"exclude pattern {raw!r} may not contain '..'")
        out.append(pattern)
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> tuple[tuple[re.Pattern[str], bool, bool], ...]:
    """(regex, anchored, folders only) per pattern."""
    out = []
    for pattern in patterns:
        folders_only = pattern.endswith("/")
        body = pattern.strip("/") if folders_only else pattern.lstrip("/")
        anchored = "/" in body or pattern.startswith("/")
        out.append((glob_regex(body, ignore_case=True), anchored, folders_only))
    return tuple(out)


def is_excluded(relative_path: str, patterns: Sequence[str]) -> str | None:
    """The first of ``patterns`` that excludes ``relative_path`` (see the module docstring),
    or None. A trailing ``/`` on ``relative_path`` marks it as a folder."""
    if not patterns:
        return None
    is_folder = relative_path.endswith("/")
    parts = [p for p in relative_path.split("/") if p]
    if not parts:
        return None
    for pattern, (regex, anchored, folders_only) in zip(
            patterns, _compiled(tuple(patterns)), strict=True):
        n_folders = len(parts) if is_folder else len(parts) - 1
        if anchored:  # the path itself, or a folder on the way, from the root
            last = n_folders if folders_only else len(parts)
            for end in range(1, last + 1):
                if regex.match("/".join(parts[:end])):
                    return pattern
        else:  # any one name on the way
            names = parts[:n_folders] if folders_only else parts
            if any(regex.match(name) for name in names):
                return pattern
    return None


__all__ = ["JUNK_FILES", "JUNK_FOLDERS", "check_globs", "glob_regex", "ignored_name",
           "is_excluded", "is_ignored"]
