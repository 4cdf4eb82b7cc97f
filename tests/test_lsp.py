"""The language server, driven over stdio by a real LSP client (pygls'), as an editor drives it."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest
from conftest import ROOT

pytest.importorskip("pygls")
from lsprotocol import types  # noqa: E402
from pygls.lsp.client import BaseLanguageClient  # noqa: E402

from incdsl.tools import lsp  # noqa: E402

TINY = """network Tiny
input 32x32x3
classes 10
budget 50M

defaults conv: bn

template block(width, reduce) {
    branch wide: conv 1x1 width
    branch {
        conv 1x1 reduce
        conv 3x3 width
    }
}

stem: conv 3x3 32
3a: block 32 16
3b: 2x block 48 24
pool: global_avgpool
fc: linear classes

aux side after 3a weight=0.3: linear classes
"""


class Editor:
    """An LSP client on its own event loop, with the notifications it received."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.client = BaseLanguageClient("incdsl-tests", "1")
        self.published: list[types.PublishDiagnosticsParams] = []
        self.messages: list[types.ShowMessageParams] = []
        self.client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)(lambda p: self.published.append(p))
        self.client.feature(types.WINDOW_SHOW_MESSAGE)(lambda p: self.messages.append(p))
        self.versions: dict[str, int] = {}

    def run(self, awaitable):
        return self.loop.run_until_complete(awaitable)

    def start(self):
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        self.run(self.client.start_io(sys.executable, "-m", "incdsl", "lsp", env=env))
        capabilities = types.ClientCapabilities(
            text_document=types.TextDocumentClientCapabilities(
                document_symbol=types.DocumentSymbolClientCapabilities(
                    hierarchical_document_symbol_support=True
                )
            )
        )
        result = self.run(self.client.initialize_async(types.InitializeParams(capabilities=capabilities)))
        self.client.initialized(types.InitializedParams())
        return result

    def stop(self):
        self.run(self.client.shutdown_async(None))
        self.client.exit(None)
        self.run(self.client.stop())
        self.loop.close()

    def open(self, uri: str, text: str) -> list[types.Diagnostic]:
        self.versions[uri] = 1
        item = types.TextDocumentItem(uri, "incdsl", 1, text)
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(item))
        return self.diagnostics(uri, 1)

    def change(self, uri: str, text: str) -> list[types.Diagnostic]:
        self.versions[uri] += 1
        document = types.VersionedTextDocumentIdentifier(version=self.versions[uri], uri=uri)
        change = types.TextDocumentContentChangeWholeDocument(text)
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(document, [change]))
        return self.diagnostics(uri, self.versions[uri])

    def diagnostics(self, uri: str, version: int, timeout: float = 30.0) -> list[types.Diagnostic]:
        """The diagnostics the server publishes for ``version`` of the document (waits for them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for params in self.published:
                if params.uri == uri and params.version == version:
                    return list(params.diagnostics)
            self.run(asyncio.sleep(0.02))
        raise AssertionError(f"no diagnostics for version {version} of {uri}")

    def position(self, uri: str, line: int, character: int):
        return types.TextDocumentIdentifier(uri), types.Position(line, character)

    def hover(self, uri: str, line: int, character: int) -> str | None:
        result = self.run(
            self.client.text_document_hover_async(types.HoverParams(*self.position(uri, line, character)))
        )
        return result.contents.value if result else None

    def complete(self, uri: str, line: int, character: int) -> list[str]:
        params = types.CompletionParams(*self.position(uri, line, character))
        result = self.run(self.client.text_document_completion_async(params))
        items = result.items if isinstance(result, types.CompletionList) else result or []
        return [item.label for item in items]

    def definition(self, uri: str, line: int, character: int):
        params = types.DefinitionParams(*self.position(uri, line, character))
        return self.run(self.client.text_document_definition_async(params))

    def format(self, uri: str):
        options = types.FormattingOptions(tab_size=4, insert_spaces=True)
        params = types.DocumentFormattingParams(types.TextDocumentIdentifier(uri), options)
        return list(self.run(self.client.text_document_formatting_async(params)) or [])

    def symbols(self, uri: str):
        params = types.DocumentSymbolParams(types.TextDocumentIdentifier(uri))
        return self.run(self.client.text_document_document_symbol_async(params))


@pytest.fixture(scope="module")
def editor():
    editor = Editor()
    editor.initialized = editor.start()
    yield editor
    editor.stop()


def uri_of(tmp_path, name="net.inc") -> str:
    return (tmp_path / name).as_uri()


def line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.splitlines()) if line.startswith(start))


def test_initialize_advertises_the_features(editor):
    capabilities = editor.initialized.capabilities
    assert capabilities.hover_provider and capabilities.definition_provider
    assert capabilities.document_formatting_provider and capabilities.document_symbol_provider
    assert capabilities.completion_provider is not None


def test_a_syntax_error_is_reported_then_cleared(editor, tmp_path):
    uri = uri_of(tmp_path)
    broken = TINY.replace("stem: conv 3x3 32", "stem: conv 3x3 32 )")
    (diagnostic,) = editor.open(uri, broken)
    line = line_of(broken, "stem:")
    assert diagnostic.severity == types.DiagnosticSeverity.Error
    assert diagnostic.message.startswith("unexpected ')'\nhint: expected")
    assert diagnostic.range.start == types.Position(line, 18)
    assert diagnostic.range.end == types.Position(line, 19)
    assert editor.change(uri, TINY) == []


def test_a_misspelt_kind_is_reported_at_its_word_with_a_hint(editor, tmp_path):
    uri = uri_of(tmp_path)
    text = TINY.replace("pool: global_avgpool", "pool: global_avgpol")
    (diagnostic,) = editor.open(uri, text)
    line = line_of(text, "pool:")
    assert diagnostic.range == types.Range(types.Position(line, 6), types.Position(line, 19))
    assert "unknown layer kind or template 'global_avgpol'" in diagnostic.message
    assert "did you mean 'global_avgpool'?" in diagnostic.message
    assert editor.change(uri, TINY) == []


def test_a_bad_argument_to_a_prelude_template_is_reported_at_the_argument(editor, tmp_path):
    uri = uri_of(tmp_path)
    text = TINY.replace("pool: global_avgpool", "5a: inception 8 8 8 8 8 2.5\npool: global_avgpool")
    (diagnostic,) = editor.open(uri, text)
    assert diagnostic.range.start == types.Position(line_of(text, "5a:"), len("5a: inception 8 8 8 8 8 "))
    assert "conv's out must be an integer, not 2.5" in diagnostic.message


def test_a_shape_error_inside_the_prelude_is_reported_on_the_calling_row(editor, tmp_path):
    uri = uri_of(tmp_path)
    text = TINY.replace("fc: linear classes", "fc: linear classes\n5a: inception 8 8 8 8 8 8")
    (diagnostic,) = editor.open(uri, text)
    assert diagnostic.range.start == types.Position(line_of(text, "5a:"), 0)
    assert "needs a spatial input" in diagnostic.message or "does not fit" in diagnostic.message
    assert "prelude.inc" in diagnostic.message
    (related,) = diagnostic.related_information
    assert related.location.uri.endswith("grammars/prelude.inc")


def test_budget_exceeded_is_a_warning_on_the_budget_line(editor, tmp_path):
    uri = uri_of(tmp_path)
    text = TINY.replace("budget 50M", "budget 1M")
    (diagnostic,) = editor.open(uri, text)
    assert diagnostic.severity == types.DiagnosticSeverity.Warning
    assert diagnostic.range.start == types.Position(line_of(text, "budget"), 7)
    assert diagnostic.message.startswith("budget exceeded:")
    assert editor.change(uri, TINY) == []


def test_hover_on_a_row_gives_its_shapes_counts_and_running_total(editor, tmp_path):
    uri = uri_of(tmp_path)
    editor.open(uri, TINY)
    text = editor.hover(uri, line_of(TINY, "3a:"), 1)
    # block 32 16 on 32x32x32: wide 1x1 32 + (1x1 16, 3x3 32), each conv + BN
    params = (32 * 32 + 64) + (32 * 16 + 32) + (16 * 9 * 32 + 64)
    macs = 32 * 32 * (32 * 32 + 32 * 16 + 16 * 9 * 32)
    assert "`block3a`" in text and "32x32x32 → 32x32x64" in text
    assert f"params {params:,}" in text and f"MACs {macs:,}" in text
    stem = 32 * 32 * 32 * 3 * 9
    assert f"running total {stem + macs:,} multiply-adds" in text
    assert f"{(stem + macs) / 50e6:.1%} of the budget 50,000,000" in text


def test_hover_on_a_repeated_row_lists_every_stage_it_makes(editor, tmp_path):
    uri = uri_of(tmp_path)
    editor.open(uri, TINY)
    text = editor.hover(uri, line_of(TINY, "3b:"), 0)
    assert "`block3b`" in text and "`block3c`" in text


def test_hover_on_a_template_name_shows_its_definition(editor, tmp_path):
    uri = uri_of(tmp_path)
    editor.open(uri, TINY)
    line = line_of(TINY, "3a:")
    text = editor.hover(uri, line, TINY.splitlines()[line].index("block") + 2)
    assert "template block(width, reduce) {" in text
    assert "parameters: width, reduce" in text
    call = TINY + "5a: inception 8 8 8 8 8 8\n"
    editor.change(uri, call)
    text = editor.hover(uri, line_of(call, "5a:"), 6)
    assert 'template inception(n1x1 "#1x1", n3x3red "#3x3 reduce"' in text
    assert "prelude.inc:" in text


def test_hover_on_an_aux_head(editor, tmp_path):
    uri = uri_of(tmp_path)
    editor.open(uri, TINY)
    text = editor.hover(uri, line_of(TINY, "aux"), 5)
    assert "aux head **side** after `block3a`, loss weight 0.3" in text
    assert "params 655,370" in text  # 64 * 32 * 32 inputs -> 10, with biases


def test_definition_of_a_template_in_the_file_and_in_the_prelude(editor, tmp_path):
    uri = uri_of(tmp_path)
    text = TINY + "5a: inception 8 8 8 8 8 8\n"
    editor.open(uri, text)
    (location,) = _locations(editor.definition(uri, line_of(text, "3a:"), 5))
    assert location.uri == uri
    assert location.range.start == types.Position(line_of(text, "template block"), 9)
    (location,) = _locations(editor.definition(uri, line_of(text, "5a:"), 6))
    assert location.uri.endswith("grammars/prelude.inc")
    prelude = (ROOT / "grammars" / "prelude.inc").read_text().splitlines()
    assert prelude[location.range.start.line].startswith("template inception(")


def test_definition_of_the_stage_an_aux_head_follows(editor, tmp_path):
    uri = uri_of(tmp_path)
    editor.open(uri, TINY)
    (location,) = _locations(editor.definition(uri, line_of(TINY, "aux"), len("aux side after 3")))
    assert location.range.start == types.Position(line_of(TINY, "3a:"), 0)


def _locations(result):
    return result if isinstance(result, list) else [result]


def test_completion_of_kinds_templates_options_and_stages(editor, tmp_path):
    uri = uri_of(tmp_path)
    text = TINY + "extra: \n"
    editor.open(uri, text)
    line = line_of(text, "extra:")
    labels = editor.complete(uri, line, len("extra: "))
    assert {"conv", "maxpool", "linear", "inception", "block"} <= set(labels)
    editor.change(uri, text.replace("extra: ", "extra: conv 3x3 8 "))
    labels = editor.complete(uri, line, len("extra: conv 3x3 8 "))
    assert {"pad=", "bn", "relu", "groups=", "eps="} <= set(labels)
    editor.change(uri, text.replace("extra: ", "extra: block "))
    assert editor.complete(uri, line, len("extra: block ")) == ["width=", "reduce="]
    aux_line = line_of(TINY, "aux")
    labels = editor.complete(uri, aux_line, len("aux side after "))
    assert labels[:3] == ["stem", "3a", "block3a"] and {"3b", "3c", "block3c", "fc"} <= set(labels)


def test_completion_works_while_the_line_does_not_parse(editor, tmp_path):
    uri = uri_of(tmp_path)
    editor.open(uri, TINY)
    text = TINY + "x: bl"
    editor.change(uri, text)  # 'x: bl' alone is an unknown kind, and the file still parses
    line = len(text.splitlines()) - 1
    assert "block" in editor.complete(uri, line, len("x: bl"))
    broken = TINY + "x: conv 3x3 (\n"
    editor.change(uri, broken)
    assert "block" in editor.complete(uri, len(broken.splitlines()) - 1, len("x: "))


def test_formatting_gives_the_canonical_layout(editor, tmp_path):
    uri = uri_of(tmp_path)
    messy = TINY.replace("stem: conv 3x3 32", "stem:   conv    3x3   32")
    editor.open(uri, messy)
    (edit,) = editor.format(uri)
    assert edit.new_text == lsp.format_spec(lsp.analyze(TINY).spec)
    assert edit.range.start == types.Position(0, 0)


def test_formatting_leaves_a_document_with_comments_alone(editor, tmp_path):
    uri = uri_of(tmp_path)
    editor.open(uri, "# a comment\n" + TINY)
    assert editor.format(uri) == []
    assert any("drops comments" in m.message for m in editor.messages)


def test_document_symbols_outline_templates_stages_and_aux_heads(editor, tmp_path):
    uri = uri_of(tmp_path)
    editor.open(uri, TINY)
    symbols = editor.symbols(uri)
    assert [s.name for s in symbols] == ["block", "stem", "3a", "3b", "pool", "fc", "side"]
    block = symbols[0]
    assert block.range.start.line == line_of(TINY, "template")
    assert block.range.end.line == line_of(TINY, "}")
    assert [c.name for c in block.children] == ["wide", "branch"]
    assert symbols[3].detail == "block (3b) 32x32x96, block (3c) 32x32x96"


# the analysis without the protocol ------------------------------------------------------------


def test_hover_and_diagnostics_on_googlenet():
    text = (ROOT / "specs" / "googlenet.inc").read_text()
    analysis = lsp.analyze(text, str(ROOT / "specs" / "googlenet.inc"))
    assert lsp.diagnostics(analysis) == []
    line = line_of(text, "3a:")
    hover = lsp.hover(analysis, line, 0).contents.value
    assert "params 163,696 (159.9K) · MACs 128,049,152 (128.0M)" in hover
    over = lsp.analyze(text.replace("budget 1.6G", "budget 1.5G"), "g.inc")
    (warning,) = lsp.diagnostics(over)
    assert "1,582,671,872" in warning.message


def test_rows_before_an_error_keep_their_hover():
    text = TINY.replace("pool: global_avgpool", "pool: global_avgpol")
    analysis = lsp.analyze(text, "net.inc")
    assert analysis.error is not None
    assert "`block3a`" in lsp.hover(analysis, line_of(text, "3a:"), 0).contents.value
    assert "no figures past the error" in lsp.hover(analysis, line_of(text, "pool:"), 0).contents.value


def test_positions_are_utf16_offsets():
    (diagnostic,) = lsp.diagnostics(lsp.analyze("input 8x8x3\nconv 3x3 𝄞 8\n", "n.inc"))
    assert diagnostic.range.start == types.Position(1, 9)  # the character is one code point, two units
    assert diagnostic.range.end == types.Position(1, 11)
    assert lsp._codepoints("a𝄞b", 3) == 2 and lsp._utf16("a𝄞b", 2) == 3


def test_an_error_in_a_templates_body_points_at_the_call_too():
    text = TINY.replace("        conv 1x1 reduce", "        conv 9x9/8 reduce pad=0")
    (diagnostic,) = lsp.diagnostics(lsp.analyze(text, "/tmp/net.inc"))
    assert "branches must agree" in diagnostic.message
    assert diagnostic.range.start.line == line_of(text, "        conv 9x9/8")  # the branch that differs
    (related,) = diagnostic.related_information
    assert related.location.range.start == types.Position(line_of(text, "3a:"), 0)


def test_a_bad_value_passed_into_a_template_is_reported_at_the_call():
    text = TINY.replace("3a: block 32 16", "3a: block 32 1.5")
    (diagnostic,) = lsp.diagnostics(lsp.analyze(text, "/tmp/net.inc"))
    assert diagnostic.range.start == types.Position(line_of(text, "3a:"), len("3a: block 32 "))
    assert "conv's out must be an integer, not 1.5" in diagnostic.message


# -- the wire, as a hostile or broken client writes it (issue 18) ---------------------------------------


class Wire:
    """The server over raw pipes: bytes written as given, every message it sends read back."""

    def __init__(self):
        import queue
        import subprocess
        import threading

        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "incdsl", "lsp"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        self.inbox: queue.Queue = queue.Queue()
        self.received: list[dict] = []
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        import json

        stream = self.process.stdout
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    return
                if not line.strip():
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            self.inbox.put(json.loads(stream.read(length)))

    def write(self, data: bytes):
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send(self, message: dict):
        import json

        body = json.dumps(message).encode()
        self.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def request(self, method: str, params, timeout: float = 15.0) -> dict:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return self.response(self.next_id, timeout)

    def notify(self, method: str, params):
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def wait(self, test, timeout: float = 15.0) -> dict:
        import queue

        deadline = time.monotonic() + timeout
        for message in self.received:
            if test(message):
                return message
        while True:
            try:
                message = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no answer in {timeout} s; received {self.received[-3:]}") from None
            self.received.append(message)
            if test(message):
                return message

    def response(self, id_, timeout: float = 15.0) -> dict:
        return self.wait(lambda m: m.get("id") == id_ and "method" not in m, timeout)

    def initialize(self):
        assert "result" in self.request(
            "initialize", {"processId": None, "capabilities": {}, "rootUri": None}
        )
        self.notify("initialized", {})

    def open(self, uri: str, text: str, version: int = 1):
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "incdsl",
                                                               "version": version, "text": text}})  # fmt: skip

    def published(self, uri: str, version: int, timeout: float = 15.0) -> dict:
        def test(m):
            p = m.get("params") or {}
            return m.get("method") == "textDocument/publishDiagnostics" and (
                p.get("uri"),
                p.get("version"),
            ) == (
                uri,
                version,
            )

        return self.wait(test, timeout)["params"]

    def hover(self, uri: str, line: int = 0, character: int = 0, timeout: float = 15.0) -> dict:
        position = {"line": line, "character": character}
        return self.request(
            "textDocument/hover", {"textDocument": {"uri": uri}, "position": position}, timeout
        )

    def close(self) -> str:
        """End the server (shutdown, exit); its stderr."""
        try:
            if self.process.poll() is None:
                self.request("shutdown", None, timeout=5)
                self.notify("exit", None)
                self.process.wait(timeout=5)
        except Exception:
            self.process.kill()
            self.process.wait()
        return self.process.stderr.read().decode("utf-8", "replace")


@pytest.fixture
def wire():
    wire = Wire()
    yield wire
    wire.close()


def opened(wire: Wire, tmp_path) -> str:
    wire.initialize()
    uri = uri_of(tmp_path)
    wire.open(uri, TINY)
    wire.published(uri, 1)
    return uri


def answers_hover(wire: Wire, uri: str) -> None:
    """The server still answers a valid request, with the right figures."""
    result = wire.hover(uri, line_of(TINY, "stem"), 2)["result"]
    assert "32x32x3 → 32x32x32" in result["contents"]["value"]


OBJECT_ID = b'{"jsonrpc": "2.0", "id": {}, "method": "shutdown"}'
MALFORMED = {
    "length not a number": b"Content-Length: abc\r\n\r\n{}",
    "length shorter than the body": b'Content-Length: 5\r\n\r\n{"jsonrpc": "2.0", "method": "x"}',
    "huge length": b"Content-Length: 99999999999\r\n\r\n{}",
    "length 2^80": b"Content-Length: %d\r\n\r\n{}" % 2**80,
    "no Content-Length": b"Content-Type: application/json\r\n\r\n{}",
    "not JSON": b"Content-Length: 9\r\n\r\n{not json",
    "not UTF-8": b"Content-Length: 4\r\n\r\n\xff\xfe{}",
    "JSON nested 100,000 deep": b"Content-Length: 200000\r\n\r\n" + b"[" * 100_000 + b"]" * 100_000,
    "a list, not a message": b"Content-Length: 2\r\n\r\n[]",
    "an id that is an object": b"Content-Length: %d\r\n\r\n%s" % (len(OBJECT_ID), OBJECT_ID),
    "noise between messages": b"garbage\r\n\x00\x1b[2J\r\n",
    "a header line 1 MiB long": b"X-Long: " + b"y" * 1024 * 1024 + b"\r\n\r\n",
    "a Content-Length line 10 KB long": b"Content-Length: " + b"1" * 10_000 + b"\r\n\r\n{}",
}


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_message_is_answered_and_the_server_keeps_serving(wire, tmp_path, name):
    uri = opened(wire, tmp_path)
    wire.write(MALFORMED[name])
    if name != "noise between messages":
        error = wire.wait(lambda m: m.get("id") is None and "error" in m)["error"]
        assert error["code"] in (-32700, -32600) and error["message"]
    answers_hover(wire, uri)
    assert wire.close().count("Traceback") == 0


@pytest.mark.parametrize(
    "header",
    [
        b"content-length: %d\r\n\r\n",
        b"Content-Length: %d\n\n",
        b"CONTENT-LENGTH:%d\r\nContent-Type: x\r\n\r\n",
    ],
)
def test_lenient_headers_are_read(wire, tmp_path, header):
    import json

    uri = opened(wire, tmp_path)
    position = {"line": line_of(TINY, "stem"), "character": 2}
    body = json.dumps({"jsonrpc": "2.0", "id": 99, "method": "textDocument/hover",
                       "params": {"textDocument": {"uri": uri}, "position": position}}).encode()  # fmt: skip
    wire.write(header % len(body) + body)
    assert "32x32x32" in wire.response(99)["result"]["contents"]["value"]
    answers_hover(wire, uri)


def test_a_length_longer_than_the_body_loses_only_that_message(wire, tmp_path):
    uri = opened(wire, tmp_path)
    wire.write(b'Content-Length: 300\r\n\r\n{"jsonrpc": "2.0", "method": "x"}')
    position = {"textDocument": {"uri": uri}, "position": {"line": line_of(TINY, "stem"), "character": 2}}
    for id_ in (101, 102):  # the first's header, and part of the second, are inside those 300 bytes
        wire.send({"jsonrpc": "2.0", "id": id_, "method": "textDocument/hover", "params": position})
    for id_ in (101, 102):
        assert "32x32x32" in wire.response(id_)["result"]["contents"]["value"]


def test_every_request_gets_an_answer(wire, tmp_path):
    uri = opened(wire, tmp_path)
    error = wire.hover(uri, -1, -1)["error"]
    assert error["code"] == -32602  # InvalidParams
    error = wire.request("textDocument/hover", {"textDocument": {"uri": uri}})["error"]
    assert error["code"] == -32602
    assert wire.request("no/such/method", {})["error"]["code"] == -32601
    answers_hover(wire, uri)


def test_requests_before_initialize_are_refused_as_the_protocol_says(wire, tmp_path):
    uri = uri_of(tmp_path)
    assert wire.hover(uri)["error"]["code"] == -32002  # ServerNotInitialized
    wire.open(uri, TINY)  # a notification before initialize: dropped
    wire.initialize()
    assert wire.hover(uri, line_of(TINY, "stem"), 2)["result"] is None  # never opened
    wire.open(uri, TINY)
    answers_hover(wire, uri)


def test_requests_after_shutdown_are_refused(wire, tmp_path):
    uri = opened(wire, tmp_path)
    assert wire.request("shutdown", None)["result"] is None
    assert wire.hover(uri)["error"]["code"] == -32600


def test_a_uri_never_opened_is_not_read_from_disk(wire, tmp_path):
    fifo = tmp_path / "pipe.inc"
    os.mkfifo(fifo)
    spec = tmp_path / "real.inc"
    spec.write_text(TINY)
    uri = opened(wire, tmp_path)
    for other in (fifo.as_uri(), (tmp_path / "missing.inc").as_uri(), spec.as_uri(), "untitled:x"):
        assert wire.hover(other, 0, 0, timeout=5)["result"] is None
        assert wire.request("textDocument/documentSymbol", {"textDocument": {"uri": other}})["result"] == []
        change = {"textDocument": {"uri": other, "version": 2}, "contentChanges": [{"text": "x"}]}
        wire.notify("textDocument/didChange", change)
    answers_hover(wire, uri)
    assert "Traceback" not in wire.close()


def test_a_lone_surrogate_still_gets_diagnostics_and_an_outline(wire, tmp_path):
    uri = opened(wire, tmp_path)
    text = TINY.replace("stem: conv 3x3 32", "stem: conv 3x3 32  # \ud800 lone\nbad: convv 3x3 8")
    other = uri_of(tmp_path, "surrogate.inc")
    wire.open(other, text)
    (diagnostic,) = wire.published(other, 1)["diagnostics"]
    assert "convv" in diagnostic["message"] and diagnostic["range"]["start"]["line"] == line_of(text, "bad")
    symbols = wire.request("textDocument/documentSymbol", {"textDocument": {"uri": other}})["result"]
    assert "stem" in [s["name"] for s in symbols]
    answers_hover(wire, uri)


def test_quick_edits_are_analysed_once_in_their_latest_version(wire, tmp_path):
    wire.initialize()
    uri = uri_of(tmp_path, "irv2.inc")
    text = (ROOT / "specs" / "inception_resnet_v2.inc").read_text()
    wire.open(uri, text)
    edits = 200  # each analysis takes longer than an edit takes to arrive: they queue up
    for version in range(2, edits + 2):
        edited = text.replace("3x3/2 32 pad=0", f"3x3/2 {version} pad=0", 1)
        wire.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": [{"text": edited}]})  # fmt: skip
    line = line_of(text, "conv2d_1a")
    result = wire.hover(uri, line, 2, timeout=30)["result"]
    assert f"299x299x3 → 149x149x{edits + 1}" in result["contents"]["value"]  # the latest version
    published = [m for m in wire.received if m.get("method") == "textDocument/publishDiagnostics"]
    assert published[-1]["params"]["version"] == edits + 1
    assert len(published) < edits // 5, f"{len(published)} analyses for {edits} edits"


def test_the_rows_before_an_error_are_found_with_one_build(monkeypatch):
    builds = []
    build = lsp._build
    monkeypatch.setattr(lsp, "_build", lambda spec: builds.append(len(spec.rows)) or build(spec))
    rows = "".join(f"c{i}: conv 3x3 8\n" for i in range(200))
    analysis = lsp.analyze("network n\ninput 8x8x3\nclasses 10\n" + rows + "bad: convv 3x3 8\n", "n.inc")
    assert analysis.failing_row == 200 and len(analysis.stats.rows) == 200
    assert builds == [201, 200]  # the whole spec, then the rows before the error's


def test_the_search_for_rows_before_an_error_is_bounded_in_time(monkeypatch):
    monkeypatch.setattr(lsp, "PREFIX_SECONDS", 0.0)
    text = TINY.replace("conv 1x1 reduce", "conv 1x1 reduce stride=0")  # inside a template: no row
    analysis = lsp.analyze(text, "n.inc")
    assert analysis.error is not None and analysis.failing_row is None and analysis.stats is None
    assert lsp.diagnostics(analysis)  # still reported, at the error's place


def test_a_spec_that_is_slow_to_fail_is_not_built_again(monkeypatch):
    monkeypatch.setattr(lsp, "PREFIX_SECONDS", -1.0)  # as if the whole spec took longer than the limit
    builds = []
    build = lsp._build
    monkeypatch.setattr(lsp, "_build", lambda spec: builds.append(len(spec.rows)) or build(spec))
    analysis = lsp.analyze("network n\ninput 8x8x3\nclasses 10\nc: conv 3x3 8\nbad: convv 3x3 8\n", "n.inc")
    assert builds == [2] and analysis.failing_row == 1 and analysis.stats is None
    (diagnostic,) = lsp.diagnostics(analysis)
    assert diagnostic.range.start.line == 4


def test_a_thousand_deep_template_chain_is_a_diagnostic_not_an_internal_error():
    lines = ["network deep", "input 32x32x3", "classes 10", "template t0(w) {", "    conv 3x3 w", "}"]
    for i in range(1, 1000):
        lines += [f"template t{i}(w) {{", f"    t{i - 1} w", "}"]
    analysis = lsp.analyze("\n".join([*lines, "a: t999 16", ""]), "deep.inc")
    (diagnostic,) = lsp.diagnostics(analysis)
    assert "nests deeper than 64 levels" in diagnostic.message and "internal error" not in diagnostic.message


def test_the_server_exits_0_after_shutdown_and_1_when_its_input_just_ends(tmp_path):
    wire = Wire()
    opened(wire, tmp_path)
    assert wire.close().count("Traceback") == 0 and wire.process.returncode == 0
    wire = Wire()
    opened(wire, tmp_path)
    wire.process.stdin.close()
    assert wire.process.wait(timeout=10) == 1
    assert "Fatal" not in wire.close()


# -- fuzzing the framing: whatever the bytes, the reader ends, never raises, and keeps its bounds -------

FRAMING_TOKENS = [b"Content-Length: ", b"content-length:", b"Content-Type: x", b"\r\n", b"\n", b"\r", b":",
                  b"0", b"7", b"99999999999", b"-1", b" ", b"{", b"}", b"[", b'"', b"\\", b"\x00", b"\xff",
                  b"\xed\xa0\x80", b'"\\ud800"', b"9" * 9000]  # fmt: skip


def fuzz_messages(rng) -> bytes:
    import json

    bodies = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}},
        {
            "jsonrpc": "2.0",
            "method": "textDocument/didOpen",
            "params": {"textDocument": {"uri": "u", "text": TINY}},
        },
        {"jsonrpc": "2.0", "id": 2, "method": "textDocument/hover", "params": {"position": {"line": 1}}},
    ]
    data = b"".join(
        b"Content-Length: %d\r\n\r\n%s" % (len(b), b) for b in (json.dumps(m).encode() for m in bodies)
    )
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(data) + 1)
        action = rng.random()
        if action < 0.4:
            data[at:at] = rng.choice(FRAMING_TOKENS)
        elif action < 0.7:
            del data[at : at + rng.randint(1, 20)]
        else:
            data[at : at + 1] = bytes([rng.randrange(256)])
    return bytes(data)


def test_fuzzed_framing_never_breaks_the_reader():
    import io
    import random

    from incdsl.tools import lspio

    for seed in range(300):
        rng = random.Random(seed)
        data = fuzz_messages(rng)
        reader = lspio.FrameReader(io.BytesIO(data))
        frames = []
        while (frame := reader.next()) is not None:
            frames.append(frame)
            assert len(frames) <= len(data), f"seed {seed}: the reader does not advance"
            assert frame.problem is None or frame.message is None, f"seed {seed}"
        assert len(reader.pending) == 0, f"seed {seed}: bytes left unread at the end"


def test_the_reader_resynchronises_after_each_kind_of_damage():
    import io
    import json

    from incdsl.tools import lspio

    good = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "x"}).encode()
    message = b"Content-Length: %d\r\n\r\n%s" % (len(good), good)
    for damage in MALFORMED.values():
        frames = []
        reader = lspio.FrameReader(io.BytesIO(damage + message))
        while (frame := reader.next()) is not None:
            frames.append(frame)
            assert len(frames) <= 2, f"{damage[:40]}: the reader does not advance"
        assert frames[-1].message == {"jsonrpc": "2.0", "id": 7, "method": "x"}, damage[:40]
        assert len(frames) <= 2, damage[:40]  # the damaged message (or nothing, for noise), then the good one


def test_every_independent_error_is_a_diagnostic():
    """An unknown kind on one row and a wrong argument on another: two diagnostics, each at its row;
    a shape error after them is not searched for (it could be the echo of a row left out)."""
    text = "input 32x32x3\nclasses 10\na: conv 3x3 16\nb: convv 3x3 16\nc: conv 3x3\nd: maxpool 3x3/2 pad=9\nfc: linear classes\n"
    analysis = lsp.analyze(text, "n.inc")
    found = lsp.diagnostics(analysis)
    assert [d.range.start.line for d in found] == [3, 4, 5]
    assert "unknown layer kind or template 'convv'" in found[0].message
    assert "conv takes 2 arguments, got 1" in found[1].message
    assert "pad must be at most half the kernel size" in found[2].message
    shape = lsp.analyze("input 8x8x3\na: conv 9x9/1 4 pad=0\nb: convv 3x3 4\n", "s.inc")
    assert len(lsp.diagnostics(shape)) == 1  # a shape error first: nothing more is claimed


def test_the_zoo_vocabulary_is_completed_and_hovered():
    """The new kinds come from the registry: every activation, norm, gate, split and shuffle."""
    analysis = lsp.analyze("input 8x8x3\nconv 3x3 8\nrel", "n.inc")
    labels = {item.label for item in lsp.completions(analysis, 2, 3)}
    assert {"relu6", "hardswish", "batchnorm", "layernorm2d", "shuffle", "gate", "split", "act"} <= labels
    analysis = lsp.analyze("input 8x8x3\nconv 3x3 8 act=none\nrelu6\nshuffle 2\n", "n.inc")
    assert "**ReLU6** `relu6`" in lsp.hover(analysis, 2, 1).contents.value
    assert "8x8x8 → 8x8x8" in lsp.hover(analysis, 3, 1).contents.value
