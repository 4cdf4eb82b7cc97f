"""A run directory's layout: the files the trainer writes and ``incdsl runs`` reads, and ``run.json``.

Both :mod:`incdsl.train` (which writes runs) and :mod:`incdsl.tools.runs` (which reads them) import this
module, so the trainer never imports ``runs`` (which loads the trainer's checkpoint reader only for a
run from before ``run.json``). It imports neither torch nor the trainer.
``run.json`` is described in :mod:`incdsl.tools.runs`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from incdsl.files import write_atomic

BEST = "best.pt"
RUN_INFO, METRICS, CHECKPOINT = "run.json", "metrics.jsonl", "checkpoint.pt"
FORMAT = "incdsl-run/1"


def write_run_info(config, bundle, images_per_epoch: int, settings: dict[str, Any] | None = None) -> None:
    """Write ``run.json`` into ``config.out``: what was trained, how, on what (see the module doc);
    ``settings``, every resolved training setting (incdsl train --print-config), when given."""
    info = {
        "format": FORMAT,
        "target": config.target,
        "network": bundle.name,
        "recipe": config.recipe,
        "data": config.data,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "num_classes": bundle.num_classes,
        "images_per_epoch": images_per_epoch,
        "spec_text": bundle.spec_text,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if settings is not None:
        info["settings"] = settings
    write_atomic(Path(config.out) / RUN_INFO, json.dumps(info, indent=2) + "\n")
