"""The reference data in tests/fixtures/reference (torchvision's, timm's, pretrainedmodels' layouts,
counts and logits) and the deterministic weight filler that goes with them."""

from __future__ import annotations

import importlib.util
import json
from functools import cache

from conftest import TESTS

REFERENCE = TESTS / "fixtures" / "reference"


def _load_reference_init():
    spec = importlib.util.spec_from_file_location("reference_init", REFERENCE / "reference_init.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def reference_json(name: str) -> dict:
    """One of the reference files (``zoo_models``, ``family_reference_logits``, ...), read once."""
    return json.loads((REFERENCE / f"{name}.json").read_text())


reference_init = _load_reference_init()  # fill_state_dict(model), reference_input(batch, c, size, seed)
