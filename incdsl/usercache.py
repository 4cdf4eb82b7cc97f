"""A private cache of values that are slow to compute (Lark's parse tables), for a faster start-up.

It follows the trust model of Python's own ``__pycache__``: the values are stored with ``marshal``
(plain data: no pickle, nothing that runs code when loaded) and trusted because nobody but the user can
write where they live. The folder (``$INCDSL_CACHE``, else ``$XDG_CACHE_HOME/incdsl``, else
``~/.cache/incdsl``; then ``tables/``) is created with mode 0700; it and its parent must be owned by the
user and writable by nobody else, a file is opened without following a symlink and must be a regular
file owned by the user, and a file is written beside its final name and renamed into place. Anything
else (another owner, loose permissions, a symlink, a damaged file, a read-only home) and the cache is
not used: the caller computes the value. Nothing is ever read from the shared temporary directory.

>>> store("example", {"a": (1, 2)}); load("example")  # doctest: +SKIP
{'a': (1, 2)}
"""

from __future__ import annotations

import contextlib
import marshal
import os
import stat
import tempfile
from pathlib import Path

MAX_BYTES = 4 * 2**20
SUFFIX = ".marshal"


def user_cache_dir() -> Path:
    """``$INCDSL_CACHE``, else ``$XDG_CACHE_HOME/incdsl``, else ``~/.cache/incdsl``."""
    if os.environ.get("INCDSL_CACHE"):
        return Path(os.environ["INCDSL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "incdsl"


def load(name: str):
    """The value stored under ``name``, or None when there is none that can be trusted."""
    folder = _private_folder()
    if folder is None:
        return None
    try:
        fd = os.open(folder / (name + SUFFIX), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(file.fileno())
        if not _mine(status) or not stat.S_ISREG(status.st_mode) or status.st_size > MAX_BYTES:
            return None
        try:
            return marshal.loads(file.read(MAX_BYTES + 1))
        except (EOFError, ValueError, TypeError):
            return None


def store(name: str, value) -> None:
    """Keep ``value`` (plain data: dicts, lists, tuples, strings, numbers) under ``name``, if the
    private folder can be had; failures are silent, the cache being only an optimisation."""
    folder = _private_folder(create=True)
    if folder is None:
        return
    with contextlib.suppress(OSError, ValueError):
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(marshal.dumps(value))
            os.replace(temporary, folder / (name + SUFFIX))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _private_folder(create: bool = False) -> Path | None:
    """The cache's ``tables`` folder when it (and its parent) can be trusted; None otherwise."""
    folder = user_cache_dir() / "tables"
    try:
        if create:
            folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
        parent, own = os.lstat(folder.parent), os.lstat(folder)
    except OSError:
        return None
    if not (stat.S_ISDIR(own.st_mode) and _mine(own) and stat.S_IMODE(own.st_mode) & 0o077 == 0):
        return None
    if not (stat.S_ISDIR(parent.st_mode) and _mine(parent)):
        return None
    return folder


def _mine(status: os.stat_result) -> bool:
    """Owned by this user and writable by nobody else."""
    return status.st_uid == os.getuid() and stat.S_IMODE(status.st_mode) & 0o022 == 0
