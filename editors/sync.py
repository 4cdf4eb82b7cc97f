"""Write the layer kinds of incdsl's registry into the editor files' keyword lists.

    python editors/sync.py

Run it after adding a layer kind (tests/test_editors.py fails, naming the kinds, until the lists
agree with the registry). The words that are not kinds (``act``, the prelude's ``inception``) and the
block keywords are listed here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from incdsl.kinds.layers import ACT, KINDS

EDITORS = Path(__file__).parent
ROW_WORDS = (*KINDS, ACT, "inception")  # what a row's kind may be, besides a spec's own templates
KEYWORDS = ("branch", "after", "residual", "gate", "split", "shortcut", "sequential")


def textmate() -> None:
    path = EDITORS / "vscode" / "syntaxes" / "incdsl.tmLanguage.json"
    text = path.read_text()
    for rule, words in (("kind", ROW_WORDS), ("keyword", KEYWORDS)):
        pattern = json.dumps(rf"\b({'|'.join(words)})\b")
        text = re.sub(rf'("{rule}": {{\s*"match": )"[^"\n]*"', lambda m, p=pattern: m[1] + p, text)
    json.loads(text)  # still JSON
    path.write_text(text)


def vim() -> None:
    path = EDITORS / "nvim" / "syntax" / "incdsl.vim"
    text = path.read_text()
    kinds = " ".join(ROW_WORDS)
    text = re.sub(r"(?m)^syn keyword incdslKind .*$", "syn keyword incdslKind      " + kinds, text)
    words = " ".join(("template", "aux", *KEYWORDS))
    text = re.sub(r"(?m)^syn keyword incdslKeyword .*$", "syn keyword incdslKeyword   " + words, text)
    path.write_text(text)


if __name__ == "__main__":
    textmate()
    vim()
