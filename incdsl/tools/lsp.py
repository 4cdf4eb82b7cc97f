"""``incdsl lsp``: a Language Server for ``.inc`` files, over stdio (pygls).

What an editor gets:

- diagnostics as you type: every error ``incdsl check`` reports (syntax, names, shapes) at its line and
  column, and the budget exceeded as a warning on the ``budget`` line; cleared when fixed;
- hover on a row: input and output shape, params, MACs and the running total against the budget; on a
  template call, also the template; on a template's name: its parameters and its definition's first line;
- go to definition of a template (into the prelude too) and of the stage an aux head follows;
- completion of layer kinds, templates, the options of a row's kind (or a template's parameters) and
  the stages after ``aux NAME after``;
- formatting (``incdsl format``), refused when the document has comments, which the formatter drops;
- an outline of stages, templates and aux heads.

The analysis (:func:`analyze` and the functions taking an :class:`Analysis`) is plain Python returning
``lsprotocol`` types; :func:`server` wires it to pygls. Needs ``pip install 'incdsl[lsp]'``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from urllib.parse import unquote

from lsprotocol import types

from incdsl import __version__
from incdsl.analysis import report
from incdsl.errors import IncdslError, ShapeError, Span
from incdsl.ir import tree as ir
from incdsl.resources import prelude_path
from incdsl.syntax import ast, parser
from incdsl.syntax.formatter import format_spec

LANGUAGE = "incdsl"
KEYWORDS = (
    "network", "input", "classes", "budget", "defaults", "template", "branch", "aux", "residual", "gate",
    "split", "shortcut", "sequential", "act",
)  # fmt: skip
_WORD = re.compile(r"[A-Za-z0-9_]+")


# the IR glue: the only functions here that know what incdsl.stats returns -----------------------


@dataclass(frozen=True)
class _Built:
    """A built spec's stats, and for each of its rows the written top-level row it comes from."""

    stats: report.Stats
    groups: tuple[int, ...]  # per row of stats: its stage's Stage.group (an Nx row gives N rows)


def _build(spec: ast.Spec) -> _Built:
    """The stats of a parsed spec (raises IncdslError), built from its AST."""
    import incdsl

    net = incdsl.network(spec)
    return _Built(incdsl.stats(net), tuple(stage.group for stage in net.stages))


def _row_facts(stats, groups: tuple[int, ...]) -> list[tuple]:
    """For each top-level row of the AST that was built, its rows of ``stats`` (a row repeated N
    times has N), and the running MAC total after each of them: ``[((stats_row, running_macs), ...),
    ...]``; ``groups`` maps each row of ``stats`` to its written row (the IR's stage-to-row map)."""
    facts: list[list[tuple]] = []
    running = 0
    for stats_row, group in zip(stats.rows, groups, strict=True):
        running += stats_row.macs
        facts.extend([] for _ in range(group + 1 - len(facts)))
        facts[group].append((stats_row, running))
    return [tuple(group) for group in facts]


def _aux_facts(stats) -> dict:
    """Each aux head's row of ``stats``, by name."""
    return {a.name: a for a in stats.aux}


def _stage_names(stats) -> list[str]:
    """What ``aux NAME after`` accepts: every stage's label and name."""
    return [n for r in stats.rows for n in (r.label, r.name) if n]


# analysis ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """One version of a document: its AST and stats when it gets that far, and the error otherwise."""

    path: str
    text: str
    spec: ast.Spec | None = None
    stats: object | None = None  # report.Stats of the whole spec, or of the rows before the error
    error: IncdslError | None = None
    failing_row: int | None = None  # index of the first top-level row that does not build
    more: tuple[IncdslError, ...] = ()  # errors on later rows, independent of the first
    groups: tuple[int, ...] = ()  # per row of stats: the index of the written row it comes from

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    def facts(self) -> list[tuple]:
        return self._facts

    @cached_property
    def _facts(self) -> list[tuple]:  # once per version: a hover asks for it
        if self.spec is None or self.stats is None:
            return []
        return _row_facts(self.stats, self.groups)


# The work of one analysis is bounded: the text by the spec's size limit (the parser refuses more at
# once), the build by the IR's limits, and the search for the rows before an error (whose hover keeps
# its figures) by this many seconds, after the one build that the error's place usually makes enough.
PREFIX_SECONDS = 2.0
_SURROGATE = re.compile("[\ud800-\udfff]")


def analyze(text: str, path: str = "<spec>") -> Analysis:
    """Parse and build ``text``; on an error, the stats of the rows before the one that fails.

    A lone surrogate (a broken UTF-16 pair, which JSON can carry) is read as U+FFFD, which takes the
    same one UTF-16 unit: positions are unchanged, and no text sent back holds it."""
    import incdsl

    text = _SURROGATE.sub("\ufffd", text)
    try:
        spec = incdsl.parse(text, path)
    except IncdslError as error:
        return Analysis(path, text, error=error)
    started = time.monotonic()
    try:
        built = _build(spec)
        return Analysis(path, text, spec, built.stats, groups=built.groups)
    except IncdslError as error:
        spent = time.monotonic() - started
        good, built, exact = _longest_prefix(spec, error, spent)
        failing = good if exact and good < len(spec.rows) else None
        more = _independent_errors(spec, error, spent)
        if built is None:
            return Analysis(path, text, spec, None, error, failing, more)
        return Analysis(path, text, spec, built.stats, error, failing, more, built.groups)
    except Exception as error:  # a bug in incdsl, not in the spec: say so rather than go quiet
        internal = IncdslError(f"internal error in incdsl: {type(error).__name__}: {error}")
        return Analysis(path, text, spec, error=internal)


def _longest_prefix(spec: ast.Spec, error: IncdslError, spent: float = 0.0):
    """How many top-level rows build (without aux heads), their stats, and whether that count is
    known exactly: the rows before the one the error is on, when they build; else a bisection on the
    count, for at most PREFIX_SECONDS. When the whole spec took ``spent`` > PREFIX_SECONDS to fail
    (thousands of rows), nothing more is built: the rows before the error have no figures."""

    def trial(count: int):
        return _build(ir.prefix(spec, count))

    hi = len(spec.rows)
    guess = _row_of(spec, error)
    if spent > PREFIX_SECONDS:
        return (guess, None, True) if guess is not None else (0, None, False)
    if guess is not None:
        if guess == 0:
            return 0, None, True
        try:
            return guess, trial(guess), True
        except Exception:  # an IncdslError, or whatever made the whole spec fail
            hi = guess - 1
    lo, best, deadline = 0, None, time.monotonic() + PREFIX_SECONDS
    while lo < hi and time.monotonic() < deadline:
        mid = (lo + hi + 1) // 2
        try:
            best = (mid, trial(mid))
            lo = mid
        except Exception:
            hi = mid - 1
    stats = best[1] if best is not None and best[0] == lo else None
    return lo, stats, lo == hi


MAX_ERRORS = 20  # diagnostics of one document


def _independent_errors(spec: ast.Spec, first: IncdslError, spent: float) -> tuple[IncdslError, ...]:
    """The errors on later top-level rows that do not depend on the first: the row at fault is left
    out and the spec built again, for at most PREFIX_SECONDS. A shape error ends the search (leaving
    a row out changes the shapes after it: what follows could be the first error's echo), and so
    does an error not on a top-level row (in a template's body, every call would repeat it)."""
    if spent > PREFIX_SECONDS or isinstance(first, ShapeError):
        return ()
    found: list[IncdslError] = []
    rows, error, deadline = list(spec.rows), first, time.monotonic() + PREFIX_SECONDS
    while len(found) < MAX_ERRORS and time.monotonic() < deadline:
        index = _row_of(replace(spec, rows=tuple(rows)), error)
        if index is None or index >= len(rows) - 1:  # none, or no row after it to look at
            break
        del rows[index]
        try:
            _build(ir.prefix(replace(spec, rows=tuple(rows)), len(rows)))
            break
        except ShapeError:
            break
        except IncdslError as later:
            if later is not first and (later.span, later.message) != (error.span, error.message):
                found.append(later)
            error = later
        except Exception:
            break
    return tuple(found)


def _row_of(spec: ast.Spec, error: IncdslError) -> int | None:
    """The index of the top-level row an error is written on (the count of rows before it), or None
    when it is elsewhere (a template's body, the prelude); len(rows) after the last row."""
    span = error.span
    if span is None or span.path != spec.path or error.notes or not spec.rows:
        return None
    if any(aux.name.span.line == span.line for aux in spec.auxes):
        return len(spec.rows)
    starts = [_row_start(row).line for row in spec.rows]
    if span.line < starts[0]:
        return 0
    index = max(i for i, line in enumerate(starts) if line <= span.line)
    return index if span.line == starts[index] else None


# positions -------------------------------------------------------------------------------------


def _utf16(line: str, column: int) -> int:
    """A 0-based code-point column as LSP's UTF-16 offset (counted, not encoded: a lone surrogate is
    one unit too)."""
    return column + sum(1 for char in line[:column] if ord(char) > 0xFFFF)


def _codepoints(line: str, character: int) -> int:
    """An LSP UTF-16 offset as a 0-based code-point column."""
    units = 0
    for i, char in enumerate(line):
        if units >= character:
            return i
        units += 2 if ord(char) > 0xFFFF else 1
    return len(line)


def _range(lines: list[str], line: int, column: int, width: int = 1) -> types.Range:
    """LSP range of ``width`` characters at a 1-based (line, column)."""
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    start = max(column - 1, 0)
    end = min(start + max(width, 1), max(len(text), start + 1))
    return types.Range(
        types.Position(line - 1, _utf16(text, start)), types.Position(line - 1, _utf16(text, end))
    )


def _span_range(lines: list[str], span: Span) -> types.Range:
    return _range(lines, span.line, span.column, span.width)


def _row_start(row: ast.Row) -> Span:
    return row.name.span if row.name else row.span


def _word_at(line: str, column: int) -> tuple[str, int] | None:
    """The identifier at a 0-based column and its 0-based start, or None."""
    for match in _WORD.finditer(line):
        if match.start() <= column <= match.end():
            return match.group(), match.start()
    return None


# diagnostics -----------------------------------------------------------------------------------


def diagnostics(analysis: Analysis) -> list[types.Diagnostic]:
    """What ``incdsl check`` reports: the first error, and every later one independent of it (an
    unknown name, a wrong argument on another row), and the budget exceeded (a warning)."""
    lines = analysis.lines
    if analysis.error is not None:
        first = _error_diagnostic(analysis, analysis.error, lines)
        return [
            first,
            *(_error_diagnostic(replace(analysis, failing_row=None), e, lines) for e in analysis.more),
        ]
    stats, spec = analysis.stats, analysis.spec
    if stats is None or stats.budget is None or stats.macs <= stats.budget:
        return []
    span = spec.header_spans.get("budget")
    where = _span_range(lines, span) if span else _range(lines, 1, 1, len(lines[0]) or 1)
    return [
        types.Diagnostic(
            where,
            report.budget_verdict(stats.macs, stats.budget),
            severity=types.DiagnosticSeverity.Warning,
            source=LANGUAGE,
            code="budget",
        )
    ]


def _error_diagnostic(analysis: Analysis, error: IncdslError, lines: list[str]) -> types.Diagnostic:
    span, message = error.span, error.message
    related = None
    if span is None or span.path != analysis.path:  # no place, or inside the prelude: point at the row
        row = _failing_row(analysis)
        if span is not None:
            message = f"{message} (in {Path(_file(span.path)).name}:{span.line}:{span.column})"
            where = types.Location(_uri(span.path), _span_range(span.source.split("\n"), span))
            related = [types.DiagnosticRelatedInformation(where, "here, in the template's definition")]
        span = _row_start(row) if row is not None else Span(analysis.path, 1, 1, width=len(lines[0]) or 1)
        if row is not None:
            span = replace(span, width=len(lines[span.line - 1]) - span.column + 1)
    elif _failing_row(analysis) is not None and _row_start(_failing_row(analysis)).line != span.line:
        call = _row_start(_failing_row(analysis))  # the error is in a template's body: say which call
        where = types.Location(_uri(analysis.path), _span_range(lines, call))
        related = [types.DiagnosticRelatedInformation(where, f"in the call on line {call.line}")]
    if error.hint:
        message = f"{message}\nhint: {error.hint}"
    return types.Diagnostic(
        _span_range(lines, span),
        message,
        severity=types.DiagnosticSeverity.Error,
        source=LANGUAGE,
        code=type(error).__name__,
        related_information=related,
    )


def _failing_row(analysis: Analysis) -> ast.Row | None:
    if analysis.spec is None or analysis.failing_row is None:
        return None
    return analysis.spec.rows[analysis.failing_row]


def _file(path: str) -> str:
    """A span's path as a file: incdsl.from_text names the prelude ``<prelude>`` in its spans."""
    return str(prelude_path()) if path == parser.PRELUDE else path


def _uri(path: str) -> str:
    path = _file(path)
    return Path(path).resolve().as_uri() if not path.startswith("<") else f"untitled:{path}"


# templates -------------------------------------------------------------------------------------


def _templates(spec: ast.Spec | None) -> dict[str, ast.Template]:
    """The templates a spec can call: the prelude's, shadowed by its own (unchecked: a document
    being typed may define one twice)."""
    table = {t.name: t for t in parser.prelude()}
    if spec is not None:
        table.update({t.name: t for t in spec.templates})
    return table


def _template_doc(template: ast.Template) -> str:
    """Markdown: the definition's head, where it is, and the comment block above it."""
    lines = template.span.source.split("\n")
    head = []  # the definition's head, which may run over several lines, up to its '{'
    for line in lines[template.span.line - 1 :]:
        head.append(line.rstrip())
        if "{" in line or len(head) == 4:
            break
    first = "\n".join(head).split("{")[0].rstrip() + " {"
    comments = []
    for line in reversed(lines[: template.span.line - 1]):
        if not line.lstrip().startswith("#"):
            break
        comments.insert(0, re.sub(r"^\s*# ?", "", line).rstrip())
    params = ", ".join(template.params) or "none"
    where = f"{Path(_file(template.span.path)).name}:{template.span.line}"
    text = (
        f"```incdsl\n{first}\n```\ntemplate **{template.name}** · parameters: {params} · defined at {where}"
    )
    if comments:
        text += "\n\n" + "\n".join(comments)
    return text


def _kind_doc(kind: str) -> str:
    from incdsl.kinds.layers import KINDS

    doc = (type(KINDS[kind]).__doc__ or "").strip()
    options = _kind_options(kind)
    return f"layer kind **{kind}**: {doc}" + (f"\n\noptions: {', '.join(options)}" if options else "")


def _kind_options(kind: str) -> list[str]:
    """A kind's options as written: flags bare (``relu``), others ``key=``."""
    from incdsl.kinds.layers import KINDS

    flags = KINDS[kind].flags()  # written bare: relu, nobias
    return [k if k in flags else f"{k}=" for k in KINDS[kind].options]


# hover -----------------------------------------------------------------------------------------


def hover(analysis: Analysis, line: int, character: int) -> types.Hover | None:
    """Hover text at a 0-based (line, UTF-16 character)."""
    text = analysis.lines[line] if line < len(analysis.lines) else ""
    column = _codepoints(text, character)
    word = _word_at(text, column)
    spec = analysis.spec
    if spec is None:
        return None
    parts = []
    row_index = _top_row_at(spec, line + 1, column + 1)
    if row_index is not None:
        parts.append(_row_hover(analysis, spec, row_index))
    aux = next((a for a in spec.auxes if a.name.span.line == line + 1), None)
    if aux is not None:
        parts.append(_aux_hover(analysis, aux))
    templates = _templates(spec)
    if word is not None and word[0] in templates:
        parts.append(_template_doc(templates[word[0]]))
    elif word is not None and row_index is None and aux is None and _is_kind(word[0]):
        parts.append(_kind_doc(word[0]))
    if not parts:
        return None
    return types.Hover(types.MarkupContent(types.MarkupKind.Markdown, "\n\n---\n\n".join(parts)))


def _is_kind(word: str) -> bool:
    from incdsl.kinds.layers import KINDS

    return word in KINDS


def _top_row_at(spec: ast.Spec, line: int, column: int) -> int | None:
    """The top-level row written at a 1-based (line, column): the last one starting before it."""
    found = None
    for i, row in enumerate(spec.rows):
        start = _row_start(row)
        if start.line == line and (found is None or start.column <= column):
            found = i
    return found


def _row_hover(analysis: Analysis, spec: ast.Spec, index: int) -> str:
    row = spec.rows[index]
    facts = analysis.facts()
    if analysis.stats is None or index >= len(facts):
        why = analysis.error.message if analysis.error else "the spec does not build"
        return f"**{row.kind}**: no figures past the error ({why})"
    return "\n\n".join(_stage_text(stats_row, running, spec.budget) for stats_row, running in facts[index])


def _stage_text(row, running: int, budget: int | None) -> str:
    depth = f" · depth {row.depth}" if row.depth else ""
    total = f"running total {running:,} multiply-adds"
    if budget:
        total += f", {running / budget:.1%} of the budget {budget:,}"
    return (
        f"**{row.type}** `{row.name}`  \n"
        f"{report.size(row.input)} → {report.size(row.output)}{depth}  \n"
        f"params {row.params:,} ({report.kilo(row.params) or '0'}) · "
        f"MACs {row.macs:,} ({report.mega(row.macs) or '0'})  \n"
        f"{total}"
    )


def _aux_hover(analysis: Analysis, aux: ast.Aux) -> str:
    facts = _aux_facts(analysis.stats) if analysis.stats is not None and analysis.error is None else {}
    row = facts.get(aux.name.text)
    if row is None:
        return f"aux head **{aux.name.text}**: no figures (the spec has an error)"
    return (
        f"aux head **{row.name}** after `{row.after}`, loss weight {row.weight:g}  \n"
        f"output {report.size(row.output)} · params {row.params:,} ({report.kilo(row.params)}) · "
        f"MACs {row.macs:,} ({report.mega(row.macs)}), training only"
    )


# go to definition ------------------------------------------------------------------------------


def definition(analysis: Analysis, line: int, character: int, spec: ast.Spec | None = None):
    """The template (or, after ``aux ... after``, the stage) named at a position; None if nothing."""
    spec = analysis.spec or spec
    text = analysis.lines[line] if line < len(analysis.lines) else ""
    word = _word_at(text, _codepoints(text, character))
    if spec is None or word is None:
        return None
    aux = next((a for a in spec.auxes if a.after.span.line == line + 1), None)
    if aux is not None and word[0] == aux.after.text:
        return _stage_location(analysis, spec, aux.after.text)
    template = _templates(spec).get(word[0])
    if template is None:
        return None
    span = template.span
    lines = span.source.split("\n")
    return types.Location(_uri(span.path), _span_range(lines, span))


def _stage_location(analysis: Analysis, spec: ast.Spec, name: str) -> types.Location | None:
    names = {}
    if analysis.stats is not None:
        for row, group in zip(spec.rows, analysis.facts()):
            for stats_row, _ in group:
                names[stats_row.name] = names[stats_row.label] = row
    for row in spec.rows:
        if row.name is not None:
            names.setdefault(row.name.text, row)
    row = names.get(name)
    if row is None:
        return None
    return types.Location(_uri(analysis.path), _span_range(analysis.lines, _row_start(row)))


# completion ------------------------------------------------------------------------------------

_AFTER = re.compile(r"^\s*aux\s+\w+\s+after\s+\w*$")
_DEFAULTS_KIND = re.compile(r"^\s*defaults\s+\w*$")
_DEFAULTS_OPTIONS = re.compile(r"^\s*defaults\s+(\w+)\s*:")
# Where a row's kind is written: after an optional "branch [name]:", "aux ... :", "name:" and "Nx".
_ROW_HEAD = r"^\s*(?:branch(?:\s+\w+)?\s*:\s*|aux\s[^:]*:\s*)?(?:\w+\s*:\s*)?(?:\d+x\s+)?"
_KIND_POSITION = re.compile(_ROW_HEAD + r"(\w*)$")
_ROW_KIND = re.compile(_ROW_HEAD + r"(\w+)\s")


def completions(
    analysis: Analysis, line: int, character: int, spec: ast.Spec | None = None
) -> list[types.CompletionItem]:
    """Completion items at a position; ``spec`` (the last version that parsed) stands in for a
    document that does not parse as typed."""
    from incdsl.kinds.layers import KINDS

    spec = analysis.spec or _without_line(analysis, line) or spec
    text = analysis.lines[line] if line < len(analysis.lines) else ""
    before = text[: _codepoints(text, character)]
    if "#" in before:
        return []
    if _AFTER.match(before):
        return _stage_items(analysis, spec)
    if _DEFAULTS_KIND.match(before):
        return _kind_items()
    match = _DEFAULTS_OPTIONS.match(before)
    if match:
        return _option_items(match.group(1))
    match = _KIND_POSITION.match(before)
    if match:
        first = not before.strip() or before.strip() == match.group(1)
        keywords = [_item(k, types.CompletionItemKind.Keyword, "keyword") for k in KEYWORDS] if first else []
        return _kind_items() + _template_items(spec) + keywords
    match = _ROW_KIND.match(before)
    if match:
        kind = match.group(1)
        if kind in KINDS:
            return _option_items(kind)
        template = _templates(spec).get(kind)
        if template is not None:
            return [
                _item(f"{p}=", types.CompletionItemKind.Variable, f"parameter of {kind}")
                for p in template.params
            ]
    return []


def _without_line(analysis: Analysis, line: int) -> ast.Spec | None:
    """The document parsed without the line being typed, which is often all that keeps it from parsing."""
    import incdsl

    lines = analysis.lines
    try:
        return incdsl.parse("\n".join(lines[:line] + lines[line + 1 :]), analysis.path)
    except IncdslError:
        return None


def _item(label: str, kind: types.CompletionItemKind, detail: str, doc: str | None = None):
    documentation = types.MarkupContent(types.MarkupKind.Markdown, doc) if doc else None
    return types.CompletionItem(label, kind=kind, detail=detail, documentation=documentation)


def _kind_items() -> list[types.CompletionItem]:
    from incdsl.kinds.layers import KINDS

    return [_item(k, types.CompletionItemKind.Class, "layer kind", _kind_doc(k)) for k in KINDS]


def _template_items(spec: ast.Spec | None) -> list[types.CompletionItem]:
    return [
        _item(name, types.CompletionItemKind.Function, f"template ({', '.join(t.params)})", _template_doc(t))
        for name, t in _templates(spec).items()
    ]


def _option_items(kind: str) -> list[types.CompletionItem]:
    from incdsl.kinds.layers import KINDS

    if kind not in KINDS:
        return []
    return [_item(o, types.CompletionItemKind.Property, f"option of {kind}") for o in _kind_options(kind)]


def _stage_items(analysis: Analysis, spec: ast.Spec | None) -> list[types.CompletionItem]:
    names = _stage_names(analysis.stats) if analysis.stats is not None else []
    names += [r.name.text for r in (spec.rows if spec else ()) if r.name is not None]
    return [_item(n, types.CompletionItemKind.Reference, "stage") for n in dict.fromkeys(names)]


# formatting and outline ------------------------------------------------------------------------


class FormatRefused(Exception):
    """Formatting would lose something (comments); the message says what."""


def formatting(analysis: Analysis) -> list[types.TextEdit]:
    """One edit replacing the document with its canonical layout; none when it is already canonical
    or does not parse. Raises FormatRefused for a document with comments (the formatter drops them)."""
    if analysis.spec is None:
        return []
    if "#" in analysis.text:
        raise FormatRefused("incdsl format drops comments; this document has some, so it is left as is")
    text = format_spec(analysis.spec)
    if text == analysis.text:
        return []
    lines = analysis.lines
    end = types.Position(len(lines) - 1, _utf16(lines[-1], len(lines[-1])))
    return [types.TextEdit(types.Range(types.Position(0, 0), end), text)]


def symbols(analysis: Analysis) -> list[types.DocumentSymbol]:
    """The outline: templates (with their named branches and rows), stages, aux heads, in file order."""
    spec = analysis.spec
    if spec is None:
        return []
    lines, facts = analysis.lines, analysis.facts()
    out = []
    for template in spec.templates:
        end = _block_end(lines, template.span.line)
        out.append(
            _symbol(
                lines, template.name, f"template ({', '.join(template.params)})", types.SymbolKind.Class,
                template.span, end, _item_symbols(lines, template.body),
            )
        )  # fmt: skip
    for i, row in enumerate(spec.rows):
        detail = (
            ", ".join(f"{r.type} {report.size(r.output)}" for r, _ in facts[i])
            if i < len(facts)
            else row.kind
        )
        name = row.name.text if row.name else row.kind
        kind = types.SymbolKind.Module if row.kind in _templates(spec) else types.SymbolKind.Field
        out.append(_symbol(lines, name, detail, kind, _row_start(row), _row_start(row).line))
    for aux in spec.auxes:
        detail = f"aux head after {aux.after.text}: {aux.head.kind}"
        out.append(
            _symbol(lines, aux.name.text, detail, types.SymbolKind.Event, aux.name.span, aux.name.span.line)
        )
    return sorted(out, key=lambda s: (s.range.start.line, s.range.start.character))


def _item_symbols(lines: list[str], items) -> list[types.DocumentSymbol]:
    out = []
    for item in items:
        if item.name is None and isinstance(item, ast.Row):
            continue
        start = item.name.span if item.name else item.span
        if isinstance(item, ast.Branch):
            end = _block_end(lines, start.line) if "{" in lines[start.line - 1] else start.line
            children = _item_symbols(lines, item.items)
            name = item.name.text if item.name else "branch"
            out.append(_symbol(lines, name, "branch", types.SymbolKind.Namespace, start, end, children))
        else:
            out.append(_symbol(lines, item.name.text, item.kind, types.SymbolKind.Field, start, start.line))
    return out


def _symbol(lines, name, detail, kind, span: Span, end_line: int, children=None) -> types.DocumentSymbol:
    last = lines[end_line - 1] if 0 < end_line <= len(lines) else ""
    whole = types.Range(
        types.Position(span.line - 1, 0), types.Position(end_line - 1, _utf16(last, len(last)))
    )
    selection = _span_range(lines, span)
    if selection.end.line > whole.end.line or (
        selection.end.line == whole.end.line and selection.end.character > whole.end.character
    ):
        whole = types.Range(whole.start, selection.end)
    return types.DocumentSymbol(
        name, kind, whole, selection, detail=detail or None, children=children or None
    )


def _block_end(lines: list[str], line: int) -> int:
    """The 1-based line of the ``}`` closing the block opened on ``line`` (comments skipped)."""
    depth, opened = 0, False
    for number in range(line, len(lines) + 1):
        code = lines[number - 1].split("#", 1)[0]
        for char in code:
            if char == "{":
                depth, opened = depth + 1, True
            elif char == "}":
                depth -= 1
                if opened and depth == 0:
                    return number
    return line


# the server ------------------------------------------------------------------------------------


def server():
    """The pygls LanguageServer, its features registered; :func:`main` serves it over stdio through
    :mod:`incdsl.tools.lspio`. Requests are answered from open documents only (a URI never opened is not
    read from disk: it may be a FIFO, or gone); edits only mark a document stale, and it is analysed
    once, in its latest version, when no message is waiting (``ls.idle``) or a request needs it."""
    from pygls.lsp.server import LanguageServer
    from pygls.uris import to_fs_path

    ls = LanguageServer("incdsl", __version__)
    current: dict[str, Analysis] = {}
    parsed: dict[str, ast.Spec] = {}  # the last version of each document that parsed
    stale: set[str] = set()  # open documents edited since their analysis

    def document(uri: str):
        """The open document at ``uri``, or None: never one made from the file system."""
        return ls.workspace.text_documents.get(unquote(uri))

    def refresh(uri: str) -> None:
        stale.discard(uri)
        opened = document(uri)
        if opened is None:
            return
        analysis = analyze(opened.source, _path(uri, to_fs_path))
        current[uri] = analysis
        if analysis.spec is not None:
            parsed[uri] = analysis.spec
        ls.text_document_publish_diagnostics(
            types.PublishDiagnosticsParams(uri, diagnostics(analysis), version=opened.version)
        )

    def get(uri: str) -> Analysis | None:
        if document(uri) is None:
            return None
        if uri in stale or uri not in current:
            refresh(uri)
        return current[uri]

    def idle() -> None:
        for uri in sorted(stale):
            refresh(uri)

    ls.idle = idle

    @ls.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: types.DidOpenTextDocumentParams):
        stale.add(params.text_document.uri)

    @ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: types.DidChangeTextDocumentParams):
        stale.add(params.text_document.uri)

    @ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: types.DidCloseTextDocumentParams):
        uri = params.text_document.uri
        current.pop(uri, None)
        parsed.pop(uri, None)
        stale.discard(uri)
        ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri, []))

    @ls.feature(types.TEXT_DOCUMENT_HOVER)
    def on_hover(params: types.HoverParams):
        analysis = get(params.text_document.uri)
        return hover(analysis, params.position.line, params.position.character) if analysis else None

    @ls.feature(types.TEXT_DOCUMENT_DEFINITION)
    def on_definition(params: types.DefinitionParams):
        uri, position = params.text_document.uri, params.position
        analysis = get(uri)
        return definition(analysis, position.line, position.character, parsed.get(uri)) if analysis else None

    @ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[" "]))
    def on_completion(params: types.CompletionParams):
        uri, position = params.text_document.uri, params.position
        analysis = get(uri)
        items = completions(analysis, position.line, position.character, parsed.get(uri)) if analysis else []
        return types.CompletionList(is_incomplete=False, items=items)

    @ls.feature(types.TEXT_DOCUMENT_FORMATTING)
    def on_formatting(params: types.DocumentFormattingParams):
        analysis = get(params.text_document.uri)
        try:
            return formatting(analysis) if analysis else []
        except FormatRefused as refused:
            ls.window_show_message(types.ShowMessageParams(types.MessageType.Warning, str(refused)))
            return []

    @ls.feature(types.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
    def on_symbols(params: types.DocumentSymbolParams):
        analysis = get(params.text_document.uri)
        return symbols(analysis) if analysis else []

    return ls


def _path(uri: str, to_fs_path) -> str:
    """A document's path for its messages: the file's for a file URI, else the URI itself."""
    try:
        return to_fs_path(uri) or uri
    except Exception:  # a URI that urllib cannot take apart
        return uri


def main() -> int:
    """Serve over stdin/stdout until the client says exit (see :mod:`incdsl.tools.lspio` for the limits)."""
    import sys

    from incdsl.tools.lspio import serve

    ls = server()
    return serve(ls, sys.stdin.buffer, sys.stdout.buffer, idle=ls.idle)
