"""Summarise pilot runs of the safety mini preset (a few alphas each) into one record: per run,
the training settings that differ, the per-alpha mean scores, the fraction of answers that open
with a refusal, the steering diagnostics mobench wrote and the training time.

    python benchmarks/steering/pilots.py OUT.json RUN_DIR [RUN_DIR ...]

The refusal fraction is a descriptive string match (an answer whose first 80 characters hold
one of REFUSAL_MARKERS), not a scorer: it shows what the guides changed in the answers, which
the scores may or may not see.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REFUSAL_MARKERS = ("I'm sorry", "I am sorry", "I can't", "I cannot", "I'm unable", "I'm not able")
SETTINGS = (
    "learning_rate",
    "max_steps",
    "lora_r",
    "lora_alpha",
    "beta_r",
    "modulation",
    "center_descriptors",
    "global_loss_weight",
)


def refuses(text: str) -> bool:
    head = text.strip()[:80]
    return any(marker in head for marker in REFUSAL_MARKERS)


def summarise(run_dir: Path) -> dict[str, Any]:
    spec = json.loads((run_dir / "spec.json").read_text())
    generations = [json.loads(line) for line in (run_dir / "generations.jsonl").open()]
    scores: dict[tuple[str, int, str], float] = {}
    for line in (run_dir / "scores.jsonl").open():
        row = json.loads(line)
        scores[(row["prompt_id"], row["alpha_index"], row["objective"])] = row["value"]
    by_alpha: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for g in generations:
        by_alpha[g["alpha_index"]].append(g)
    points = []
    for index in sorted(by_alpha):
        rows = by_alpha[index]
        point: dict[str, Any] = {"alpha": rows[0]["alpha"], "prompts": len(rows)}
        for objective in ("helpful", "harmless"):
            values = [scores[(g["prompt_id"], index, objective)] for g in rows]
            point[f"mean_{objective}"] = float(np.mean(values))
        point["refusal_fraction"] = float(np.mean([refuses(g["text"]) for g in rows]))
        points.append(point)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timing = json.loads((run_dir / "timing.json").read_text())
    config = spec.get("method_config", {})
    return {
        "run_dir": run_dir.name,
        "method": spec["method"],
        "settings": {k: config[k] for k in SETTINGS if k in config},
        "points": points,
        "steering": metrics.get("steering"),
        "train_wall_s": timing.get("train", {}).get("wall_s"),
    }


def main(out: Path, run_dirs: list[Path]) -> None:
    record = {
        "refusal_markers": list(REFUSAL_MARKERS),
        "runs": [summarise(d) for d in run_dirs],
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    for r in record["runs"]:
        cells = "  ".join(
            f"{p['alpha']}: h {p['mean_helpful']:+.2f} s {p['mean_harmless']:+.2f} "
            f"refuse {p['refusal_fraction']:.2f}"
            for p in r["points"]
        )
        print(r["run_dir"], r["settings"], cells)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
