"""Writing outputs: one policy for every file incdsl writes (model files, drawings, formatted specs, ONNX
exports, checkpoints), so that a failure never leaves a half-written file and a careless ``-o`` never
destroys what it should not.

The policy (what gcc, git and most editors do; see the README's "Errors and limits"):

- the output is a regular file, or does not exist yet: a directory, device node, FIFO or socket is
  refused (``-o /dev/null`` included: nothing is written through or over it);
- an output that is one of the inputs (the same file, also through a symlink or a hard link) is refused,
  as gcc refuses ``gcc a.c -o a.c``;
- a symlink is written through: its target gets the new content, the link stays a link;
- the new content is written to a temporary file beside the target and renamed onto it, so readers see
  the old file or the new one, never half of one; the replaced file's permission bits (not setuid/setgid)
  and, where allowed, its owner and group carry over, a new file gets the usual ``0666 & ~umask``;
- a hard link is not followed: the name written to gets the new content, its other names keep the old
  one (the rename gives the name a new file, as gcc and git do).

>>> write_atomic("out.txt", "hello\\n")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from incdsl.errors import IncdslError, OutputError, Span, SpecSyntaxError

_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISSOCK: "a socket",
}


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The file to write for the output ``path`` (a symlink's final target), after the checks of the
    policy above; an OutputError saying what is wrong otherwise. Writes nothing."""
    if not os.fspath(path):
        raise OutputError("the output file name is empty", hint="give a file name, like -o model.py")
    try:
        target = Path(os.path.realpath(path))
        status = os.stat(target)
    except FileNotFoundError:
        return target
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise OutputError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
    for is_kind, kind in _KINDS.items():
        if is_kind(status.st_mode):
            raise OutputError(f"cannot write {path}: it is {kind}, not a regular file")
    for source in inputs:
        with contextlib.suppress(OSError):
            if os.path.samefile(target, source):
                raise OutputError(f"cannot write {path}: it is the input file {os.fspath(source)}")
    return target


@contextlib.contextmanager
def replacing(
    path: str | os.PathLike, suffix: str = ".tmp", inputs: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """A temporary path beside ``path``'s target to write to; renamed onto the target when the block
    succeeds, deleted when it fails (see the policy above)."""
    target = check_output(path, inputs)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    tmp = Path(name)
    try:
        yield tmp
        _take_over_metadata(tmp, target)
        check_output(path, inputs)  # the target may have changed while the content was written
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(
    path: str | os.PathLike, data: str | bytes, inputs: Iterable[str | os.PathLike] = ()
) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` under the policy above, on disk before the rename."""
    with replacing(path, inputs=inputs) as tmp, open(tmp, "wb") as file:
        file.write(data.encode("utf-8") if isinstance(data, str) else data)
        file.flush()
        os.fsync(file.fileno())


def _take_over_metadata(tmp: Path, target: Path) -> None:
    """The replaced file's permission bits and owner, or a new file's default mode (mkstemp's is 0600)."""
    try:
        old = os.stat(target)
    except FileNotFoundError:
        os.chmod(tmp, 0o666 & ~_umask())
        return
    if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
        try:  # only root may give a file away; a user may still keep the file's group if a member
            os.chown(tmp, old.st_uid, old.st_gid)
        except PermissionError:
            with contextlib.suppress(PermissionError):
                os.chown(tmp, -1, old.st_gid)
    os.chmod(tmp, stat.S_IMODE(old.st_mode) & 0o777)  # not setuid, setgid or sticky


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_utf8(path: str | os.PathLike, limit: int, what: str, shown: str | None = None) -> str:
    """The text of ``what`` (a spec, a reference table) at ``path``, read no further than ``limit``
    bytes and decoded as UTF-8 (a byte-order mark allowed); an error naming it when it cannot be read,
    is larger than the limit, or holds a byte that is not UTF-8 (at that byte's line and column)."""
    shown = shown or os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise IncdslError(f"cannot read {shown}: {getattr(exc, 'strerror', None) or exc}") from None
    if len(data) > limit:
        size = f"{limit // 1024 // 1024} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"
        raise IncdslError(f"cannot read {shown}: it is larger than {size}, the limit for {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(data, exc, shown, what) from None


def _not_utf8(data: bytes, exc: UnicodeDecodeError, shown: str, what: str) -> SpecSyntaxError:
    """An error at the line and column of the first byte that is not UTF-8 (shown as U+FFFD)."""
    line_start = data.rfind(b"\n", 0, exc.start) + 1
    line = data.count(b"\n", 0, exc.start) + 1
    column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
    return SpecSyntaxError(
        f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02X} cannot be decoded)",
        Span(shown, line, column, data.decode("utf-8", "replace")),
        hint="save it as UTF-8",
    )


# Reading JSON a stranger wrote (a run's files, a language client's messages) ------------------------

_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class JSONInputError(ValueError):
    """Why bytes are not JSON a reader accepts. ``problem``: ``encoding`` (``detail``: the byte, as
    ``0xFF``), ``depth`` (nested deeper than the reader allows), ``recursion`` (too deep for Python's
    parser) or ``syntax`` (``detail``: the parser's first line). Each reader words its own message."""

    def __init__(self, problem: str, detail: str = ""):
        super().__init__(problem, detail)
        self.problem, self.detail = problem, detail


def loads_bounded(raw: bytes, max_nesting: int) -> Any:
    """One JSON value from UTF-8 bytes, refused (:class:`JSONInputError`) when it nests ``[`` and ``{``
    deeper than ``max_nesting``: checked by a scan before the parser recurses.

    >>> loads_bounded(b'{"a": [1]}', 2)
    {'a': [1]}
    >>> loads_bounded(b"[[[]]]", 2)
    Traceback (most recent call last):
    ...
    incdsl.files.JSONInputError: ('depth', '')
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JSONInputError("encoding", f"0x{raw[error.start]:02X}") from None
    if text.count("[") + text.count("{") > max_nesting:  # only then is the exact scan worth it
        depth = 0
        for token in _JSON_TOKEN.finditer(text):
            bracket = token.group()
            depth += 1 if bracket in "[{" else -1 if bracket in "]}" else 0
            if depth > max_nesting:
                raise JSONInputError("depth")
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONInputError("recursion") from None
    except ValueError as error:  # JSONDecodeError, and integers of more than 4,300 digits
        raise JSONInputError("syntax", str(error).splitlines()[0][:200]) from None
