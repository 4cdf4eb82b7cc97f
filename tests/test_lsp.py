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

from incdsl import lsp  # noqa: E402

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
    assert diagnostic.range.start.line == line_of(text, "    branch wide")
    (related,) = diagnostic.related_information
    assert related.location.range.start == types.Position(line_of(text, "3a:"), 0)


def test_a_bad_value_passed_into_a_template_is_reported_at_the_call():
    text = TINY.replace("3a: block 32 16", "3a: block 32 1.5")
    (diagnostic,) = lsp.diagnostics(lsp.analyze(text, "/tmp/net.inc"))
    assert diagnostic.range.start == types.Position(line_of(text, "3a:"), len("3a: block 32 "))
    assert "conv's out must be an integer, not 1.5" in diagnostic.message
