"""Fuzzing: the shipped specs, mutated byte by byte and token by token, never make incdsl crash.

Every mutant gets exit 0, 1 or 2, never an exception or a traceback, within a bounded time (and, in the
few runs in a fresh process, within a memory limit). Mutants are drawn from fixed seeds, so a failure
names its seed and is reproduced by running that case alone; INCDSL_FUZZ_CASES=5000 runs more.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from incdsl.tools import cli

SPECS = sorted((ROOT / "specs").glob("*.inc"))
CASES = int(os.environ.get("INCDSL_FUZZ_CASES", "400"))
SECONDS_PER_CASE = 5.0

# What a careless or hostile edit puts where a number was: extremes, non-numbers, near-misses.
NUMBERS = [
    "0", "1", "-1", "00", "3.5", ".5", "1e400", "1e-400", "1e308", "nan", "inf", "1_000", "０", "٣",
    "99999999999", "2147483647", "65536", "1000000", "1x1", "7x7/0", "9x9/3", "2147483647x1", "1.5G", "0x",
]  # fmt: skip
# ... and where any token was: punctuation, keywords, control characters, a BOM, other sizes and kinds.
TOKENS = [
    "{", "}", ";", "\n", ":", "=", "(", ")", ",", "/", "#", "x", "branch", "template", "aux", "after",
    "network", "input", "budget", "defaults", "classes", "inception", "conv", "linear", "maxpool", "3x3",
    "1x1/2", "2x", "10001x", "99999999999999999999x", "\x1b[2J", "\x00", "\ufeff", "\u202e", "é", "\t", "\r",
]  # fmt: skip


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Overwrite, insert, delete or duplicate a few byte ranges (the result need not be UTF-8)."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        at, choice = rng.randrange(len(data) + 1), rng.random()
        if choice < 0.3 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif choice < 0.5:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif choice < 0.7:
            del data[at : at + rng.randint(1, 40)]
        else:
            data[at:at] = data[at : at + rng.randint(1, 80)]
    return bytes(data)


def mutate_tokens(text: str, rng: random.Random) -> str:
    """Replace numbers and tokens, swap, drop or add tokens, keeping the rest of the spec intact."""
    parts = re.split(r"(\s+)", text)
    words = [k for k, part in enumerate(parts) if part and not part.isspace()]
    for _ in range(rng.randint(1, 6)):
        k, choice = rng.choice(words), rng.random()
        if choice < 0.4 and re.search(r"\d", parts[k]):
            parts[k] = re.sub(r"\d+(\.\d+)?(x\d+)*(/\d+)?", lambda _: rng.choice(NUMBERS), parts[k], count=1)
        elif choice < 0.6:
            parts[k] = rng.choice(TOKENS)
        elif choice < 0.75:
            other = rng.choice(words)
            parts[k], parts[other] = parts[other], parts[k]
        elif choice < 0.9:
            parts[k] = ""
        else:
            parts[k] += " " + rng.choice(TOKENS)
    return "".join(parts)


def mutate_numbers(text: str, rng: random.Random) -> str:
    """Only one or two numbers changed: mutants that mostly parse, to reach the later stages."""
    parts = re.split(r"(\s+)", text)
    numbered = [k for k, part in enumerate(parts) if re.search(r"\d", part) and not part.startswith("#")]
    for _ in range(rng.randint(1, 2)):
        k = rng.choice(numbered)
        parts[k] = re.sub(r"\d+(\.\d+)?(x\d+)*(/\d+)?", lambda _: rng.choice(NUMBERS), parts[k], count=1)
    return "".join(parts)


def mutant(seed: int) -> tuple[bytes, str]:
    """The spec of case ``seed`` and how it was made."""
    rng = random.Random(seed)
    source = rng.choice(SPECS)
    how = rng.choice(["bytes", "tokens", "numbers"])
    if how == "bytes":
        return mutate_bytes(source.read_bytes(), rng), f"{how} of {source.name}"
    mutate = mutate_tokens if how == "tokens" else mutate_numbers
    return mutate(source.read_text(), rng).encode("utf-8"), f"{how} of {source.name}"


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def refuse_constant(name):
    raise AssertionError(f"{name} in JSON output")


def commands(rng: random.Random, path: Path, out: Path) -> list[list[str]]:
    """check and stats for every case; format, compile and draw for some (compile formats with black)."""
    chosen = [["check", str(path)], ["stats", str(path), "--format", "json"]]
    extra = rng.random()
    if extra < 0.2:
        chosen.append(["format", str(path), "-o", str(out / "formatted.inc")])
    elif extra < 0.3:
        chosen.append(["compile", str(path), "-o", str(out / "model.py")])
    elif extra < 0.4:
        chosen.append(["draw", str(path), "-o", str(out / "net.dot")])
    return chosen


def test_mutated_specs_never_crash(tmp_path):
    path, failures = tmp_path / "mutant.inc", []
    started = time.perf_counter()
    for seed in range(CASES):
        data, how = mutant(seed)
        path.write_bytes(data)
        for argv in commands(random.Random(-seed), path, tmp_path):
            begun = time.perf_counter()
            try:
                code, out, err = run(argv)
            except BaseException as error:  # noqa: BLE001 - any escape is the failure being looked for
                failures.append(f"seed {seed} ({how}), {argv[0]}: {type(error).__name__}: {error}")
                break
            seconds = time.perf_counter() - begun
            if code not in (0, 1, 2) or "Traceback" in err or seconds > SECONDS_PER_CASE:
                failures.append(f"seed {seed} ({how}), {argv[0]}: exit {code}, {seconds:.1f} s: {err[-300:]}")
            if code == 0 and argv[0] == "stats":
                json.loads(out, parse_constant=refuse_constant)
            if code == 2 and argv[0] != "check":
                assert err.strip(), f"seed {seed}: exit 2 without a message"
            if code != 0:
                break  # the later commands would fail the same way
    assert not failures, "\n".join(failures[:20])
    assert time.perf_counter() - started < CASES * 0.5  # about 10 ms a case on 2 cores


def test_a_formatted_mutant_parses_again(tmp_path):
    """When a mutant is valid, ``format`` writes a spec that checks the same (numbers round-trip)."""
    checked = 0
    for seed in range(0, CASES, 4):
        data, _ = mutant(seed)
        path = tmp_path / "mutant.inc"
        path.write_bytes(data)
        code, first, _ = run(["stats", str(path), "--format", "json"])
        if code != 0:
            continue
        assert run(["format", str(path), "-o", str(tmp_path / "again.inc")])[0] == 0
        code, again, err = run(["stats", str(tmp_path / "again.inc"), "--format", "json"])
        assert code == 0, f"seed {seed}: the formatted spec fails: {err}"
        assert json.loads(again)["total"] == json.loads(first)["total"]
        checked += 1
    assert checked >= 5


LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))  # 1.5 GiB of address space
from incdsl.tools import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("seed", [3, 17, 101, 202])
def test_mutants_in_a_fresh_process_within_a_memory_limit(tmp_path, seed):
    data, how = mutant(seed)
    path = tmp_path / "mutant.inc"
    path.write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", LIMITED, "check", str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (0, 1, 2), f"seed {seed} ({how}): {result.stderr[-500:]}"
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
