"""Regenerate docs/editor.svg: Neovim with `incdsl lsp` attached, showing a diagnostic and a hover.

    python docs/screenshot.py            # needs nvim and tmux (apt-get install neovim tmux)

Neovim runs in a detached tmux session with editors/nvim/init.lua, opens a copy of mini_googlenet.inc
with a misspelt layer kind, waits for the server's diagnostic, opens the hover on stage 4a, and the
pane (with its colours) is captured by tmux and rendered to SVG by rich. Nothing is drawn by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "editor.svg"
WIDTH, HEIGHT = 118, 40
SESSION = "incdsl-screenshot"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def wait_for(text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", SESSION)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {text!r} on the screen:\n{screen}")


def main() -> None:
    for tool in ("nvim", "tmux"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (apt-get install neovim tmux)")
    folder = Path(tempfile.mkdtemp())
    spec = folder / "mini_googlenet.inc"
    text = (ROOT / "specs" / "mini_googlenet.inc").read_text()
    spec.write_text(text.replace("pool4:    maxpool ", "pool4:    maxpol  "))
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "TERM": "xterm-256color"}  # this checkout's incdsl
    command = f"nvim -u {ROOT / 'editors' / 'nvim' / 'init.lua'} {spec}"
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", SESSION, "-x", str(WIDTH), "-y", str(HEIGHT), command],
        check=True, cwd=folder, env=env,
    )  # fmt: skip
    try:
        wait_for("did you mean 'maxpool'")
        line = text.splitlines().index(next(s for s in text.splitlines() if s.startswith("4a:"))) + 1
        tmux("send-keys", "-t", SESSION, f":{line}", "Enter", "w", "K")
        wait_for("running total")
        time.sleep(0.5)
        ansi = tmux("capture-pane", "-p", "-e", "-t", SESSION)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
    render(ansi)


def render(ansi: str) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=WIDTH, file=open(os.devnull, "w"), color_system="256")
    console.print(Text.from_ansi(ansi.rstrip("\n")), soft_wrap=True)
    OUT.write_text(console.export_svg(title="nvim mini_googlenet.inc  ·  incdsl lsp"))
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
