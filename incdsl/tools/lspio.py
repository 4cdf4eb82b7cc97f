"""The language server's wire: LSP's base protocol (``Content-Length`` framing of JSON-RPC) read with
limits, in front of pygls, whose own reader trusts its input (a header it cannot read leaves it deaf; a
huge length makes it allocate that much).

What arrives from an editor is read as follows:

- headers are ``Name: value`` lines ending in CRLF, or LF alone; names are compared without case
  (``content-length``); a blank line ends them; a line at most 8 KiB, at most 32 of them;
- ``Content-Length`` is a decimal count of at most :data:`MAX_MESSAGE_BYTES` (16 MiB: a spec at its
  256 KiB limit, every character escaped, is 1.5 MiB); a message without one, with one that is not a
  number, or one over the limit is answered with a JSON-RPC error (``id`` null) and its body skipped:
  the reader looks for the next ``Content-Length`` header, in bounded chunks;
- the body is UTF-8 JSON nested at most :data:`MAX_NESTING` deep; a body that is not is answered with
  a parse error; when a length was too short, the rest of the body is skipped the same way; when it
  was too long, the next message's header found inside it is read again from there;
- every request gets a result or an error: one whose parameters do not fit the protocol's types (a
  position at line -1) an ``InvalidParams`` error, any before ``initialize`` ``ServerNotInitialized``,
  any after ``shutdown`` ``InvalidRequest``; notifications before ``initialize`` are dropped, as the
  protocol says, and so are changes to a document that was never opened;
- messages are handled one at a time; when none is waiting, the server's ``idle`` callback runs (the
  language server analyses the documents changed since, each once, in its latest version).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from incdsl.files import JSONInputError, loads_bounded

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_HEADER_LINE = 8 * 1024
MAX_HEADERS = 32
MAX_NESTING = 64  # [ and { inside one another in a message (the protocol's own go 5 or 6 deep)
QUEUED = 64  # messages read ahead of the one being handled

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32602, -32603
SERVER_NOT_INITIALIZED = -32002

_HEADER_NAME = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_CONTENT_LENGTH = b"content-length:"
_OPEN_ONLY = {"textDocument/didChange", "textDocument/didClose", "textDocument/didSave"}


@dataclass(frozen=True)
class Frame:
    """One message read: its JSON value, or the problem that kept it from being read."""

    message: Any = None
    problem: str | None = None
    code: int = INVALID_REQUEST


class FrameReader:
    """Messages from a binary stream, with the limits above; :meth:`next` returns None at its end.

    The stream is read in chunks through its file descriptor where it has one (``os.read``): a thread
    blocked there holds no lock of Python's buffered reader, so the server can exit while it waits."""

    CHUNK = 64 * 1024

    def __init__(self, stream: BinaryIO):
        try:
            fd = stream.fileno()
            self.chunk = lambda: os.read(fd, self.CHUNK)
        except (AttributeError, OSError, ValueError):  # io.BytesIO and the like
            self.chunk = lambda: (
                stream.read1(self.CHUNK) if hasattr(stream, "read1") else stream.read(self.CHUNK)
            )
        self.pending = b""  # bytes read and not yet taken, at most a chunk beyond what was asked for
        self.ended = False

    def _fill(self) -> bool:
        """Read a chunk into ``pending``; False at the end of the stream."""
        if self.ended:
            return False
        chunk = self.chunk()
        if not chunk:
            self.ended = True
            return False
        self.pending += chunk
        return True

    def next(self) -> Frame | None:
        headers: dict[bytes, bytes] = {}
        count = 0
        while True:
            line = self._readline(MAX_HEADER_LINE + 1)
            if not line:
                return None
            if not line.strip():
                if count:
                    break
                continue  # blank lines between messages
            name, colon, value = line.partition(b":")
            header = bool(colon and _HEADER_NAME.fullmatch(name))
            if header and len(line) <= MAX_HEADER_LINE:
                count += 1
                headers[name.lower()] = value.strip()
                continue
            self._skip(line)  # not a header: the rest of a body, or noise; up to the next message
            if header:
                return Frame(problem=f"a header line is longer than {MAX_HEADER_LINE // 1024} KiB")
            if count:
                return Frame(problem="a header line is not 'Name: value'")
        if count > MAX_HEADERS:
            return Frame(problem=f"a message has more than {MAX_HEADERS} header lines")
        return self._body(headers.get(b"content-length"))

    def _body(self, length: bytes | None) -> Frame | None:
        if length is None:
            return Frame(problem="a message has no Content-Length header")
        if not length.isdigit() or not length.isascii():
            shown = length[:40].decode("ascii", "backslashreplace")
            return Frame(problem=f"the Content-Length {shown!r} is not a number of bytes")
        size = int(length) if len(length) <= 12 else MAX_MESSAGE_BYTES + 1
        if size > MAX_MESSAGE_BYTES:
            return Frame(
                problem=f"a message of {length.decode()} bytes is larger than the limit, "
                f"{MAX_MESSAGE_BYTES // 1024 // 1024} MiB"
            )
        body = self._read(size)
        if len(body) < size:
            return None  # the stream ended inside the body
        return self._decode(body)

    def _decode(self, body: bytes) -> Frame:
        try:
            return Frame(message=loads(body))
        except ValueError as error:
            at = body.lower().find(_CONTENT_LENGTH, 1)
            if at > 0:  # the length was too long: the next message starts inside this body
                self.pending = body[at:] + self.pending
                try:
                    return Frame(message=loads(body[:at].rstrip()))
                except ValueError:
                    pass
            return Frame(problem=str(error), code=PARSE_ERROR)

    def _skip(self, line: bytes) -> None:
        """Skip what is not a message, up to the next ``Content-Length`` header (kept to be read)."""
        carry, start = b"", 1  # not at 0: a header line too long to read must not be read again
        while line:
            text = carry + line
            at = text.lower().find(_CONTENT_LENGTH, start)
            start = 0
            if at >= 0:
                self.pending = text[at:] + self.pending
                return
            if line.endswith(b"\n"):
                return
            carry = text[-len(_CONTENT_LENGTH) :]
            line = self._readline(MAX_HEADER_LINE + 1)

    def _readline(self, limit: int) -> bytes:
        """Up to and including the next LF, at most ``limit`` bytes (less at the end of the stream)."""
        searched = 0
        while True:
            end = self.pending.find(b"\n", searched, limit)
            if end >= 0:
                cut = end + 1
                break
            if len(self.pending) >= limit:
                cut = limit
                break
            searched = len(self.pending)
            if not self._fill():
                cut = len(self.pending)
                break
        line, self.pending = self.pending[:cut], self.pending[cut:]
        return line

    def _read(self, size: int) -> bytes:
        """``size`` bytes (fewer at the end of the stream), gathered in a list: no quadratic copies."""
        chunks, got = [self.pending], len(self.pending)
        while got < size and not self.ended:
            chunk = self.chunk()
            if not chunk:
                self.ended = True
                break
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
        self.pending = data[size:]
        return data[:size]


def loads(body: bytes) -> Any:
    """A message's JSON: UTF-8, nested at most MAX_NESTING deep (checked before the parser recurses);
    a ValueError saying what is wrong otherwise."""
    try:
        return loads_bounded(body, MAX_NESTING)
    except JSONInputError as error:
        raise ValueError(_LOADS_ERRORS[error.problem].format(error.detail)) from None


_LOADS_ERRORS = {
    "encoding": "the message is not UTF-8 (byte {})",
    "depth": f"the message nests JSON more than {MAX_NESTING} deep",
    "recursion": "the message nests JSON too deep",
    "syntax": "the message is not JSON: {}",
}


def frame(message: dict) -> bytes:
    """A message as sent: its header and its JSON (ASCII: a lone surrogate is written escaped)."""
    body = json.dumps(message, separators=(",", ":")).encode("ascii")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


# serving --------------------------------------------------------------------------------------------


class Session:
    """What the wire knows of the protocol's state: initialized, shut down, which documents are open."""

    def __init__(self, server, write: Callable[[bytes], None], idle: Callable[[], None] | None):
        self.server, self.write, self.idle = server, write, idle
        self.initialized = self.shutting_down = False
        self.open: set[str] = set()

    def error(self, id_, code: int, message: str) -> None:
        self.write(frame({"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}))

    def handle(self, item: Frame) -> None:
        """One message, dispatched to pygls, or answered here when pygls cannot answer it."""
        if item.problem is not None:
            logger.warning("malformed message: %s", item.problem)
            self.error(None, item.code, item.problem)
            return
        message = item.message
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            self.error(None, INVALID_REQUEST, "a message is a JSON-RPC 2.0 object")
            return
        method, has_id, id_ = message.get("method"), "id" in message, message.get("id")
        if has_id and (isinstance(id_, bool) or not isinstance(id_, (int, str))):
            self.error(None, INVALID_REQUEST, "a request's id is a number or a string")
            return
        if method is None:
            self._dispatch(message)  # a response to a request of the server's
            return
        if not isinstance(method, str):
            self.error(id_ if has_id else None, INVALID_REQUEST, "a message's method is a string")
            return
        if not self._admitted(message, method, has_id, id_):
            return
        self._dispatch(message)
        self._track(message, method)

    def _admitted(self, message: dict, method: str, has_id: bool, id_) -> bool:
        if not self.initialized and method not in ("initialize", "exit"):
            if has_id:
                self.error(id_, SERVER_NOT_INITIALIZED, f"{method} before initialize")
            return False
        if self.shutting_down and method != "exit":
            if has_id:
                self.error(id_, INVALID_REQUEST, f"{method} after shutdown")
            return False
        if method in _OPEN_ONLY and _uri(message) not in self.open:
            logger.warning("%s on a document that is not open: dropped", method)
            return False
        return True

    def _track(self, message: dict, method: str) -> None:
        if method == "initialize":
            self.initialized = True
        elif method == "shutdown":
            self.shutting_down = True
        elif method == "textDocument/didOpen" and _uri(message) is not None:
            self.open.add(_uri(message))
        elif method == "textDocument/didClose":
            self.open.discard(_uri(message))

    def _dispatch(self, message: dict) -> None:
        from pygls.exceptions import JsonRpcException

        protocol = self.server.protocol
        request = "id" in message and "method" in message
        try:
            structured = json.loads(json.dumps(message), object_hook=protocol.structure_message)
        except JsonRpcException as error:
            if request:
                self.error(message["id"], error.code, f"{message['method']}: invalid parameters")
            return
        except Exception as error:  # what lsprotocol's converter raises for what it cannot build
            if request:
                self.error(message["id"], INVALID_PARAMS, f"{message['method']}: {type(error).__name__}")
            return
        try:
            protocol.handle_message(structured)
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as error:  # pygls answers a failing handler itself; this is the wire's own
            logger.exception("cannot handle %s", message.get("method"))
            if request:
                self.error(message["id"], INTERNAL_ERROR, f"{message['method']}: {type(error).__name__}")


def _uri(message: dict) -> str | None:
    params = message.get("params")
    document = params.get("textDocument") if isinstance(params, dict) else None
    uri = document.get("uri") if isinstance(document, dict) else None
    return uri if isinstance(uri, str) else None


def serve(server, stdin: BinaryIO, stdout: BinaryIO, idle: Callable[[], None] | None = None) -> int:
    """Serve ``server`` (a pygls LanguageServer) over the streams until ``exit`` or the end of input;
    the exit status (0 after shutdown, 1 otherwise, as the protocol says)."""

    def write(data: bytes) -> None:
        stdout.write(data)
        stdout.flush()

    class Writer:
        def write(self, data: bytes) -> None:
            write(data)

        def close(self) -> None:
            stdout.flush()

    server.protocol.set_writer(Writer())
    session = Session(server, write, idle)

    frames: queue.Queue = queue.Queue(QUEUED)  # read ahead by a thread, so that waiting edits show
    reader = FrameReader(stdin)

    def read() -> None:  # reading blocks, and must not keep the server from answering
        try:
            while True:
                item = reader.next()
                frames.put(item)
                if item is None:
                    return
        except Exception as error:  # the stream failed: end as at its end
            logger.error("cannot read the input: %s", error)
            frames.put(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=read, name="incdsl-lsp-reader", daemon=True).start()
        while True:
            try:
                item = frames.get_nowait()
            except queue.Empty:
                item = await loop.run_in_executor(None, frames.get)
            if item is None:
                return
            session.handle(item)
            await asyncio.sleep(0)  # let pygls's own tasks (async handlers, writes) run
            if frames.empty() and session.idle is not None:
                try:
                    session.idle()
                except Exception:  # a bug in an analysis must not end the server
                    logger.exception("the analysis of the documents failed")

    try:
        asyncio.run(main())
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 0
    except (BrokenPipeError, KeyboardInterrupt):
        return 1
    return 0 if session.shutting_down else 1
