"""What the trained ARMs learned, apart from how they steer: the pair accuracy of each guide's own
reward (the summed response log-prob, METHODS §2) against the run's per-objective labels, on
training pairs and on the held-out test pairs, at three alphas.

    python benchmarks/steering/arm_pair_accuracy.py OUT.json RUN_DIR [RUN_DIR ...]

A pair counts as right when the response the label prefers has the higher summed log-prob under
the guide (GenARM: each objective's ARM; PARM / UniARM: the one adapter at the alpha; "backbone":
the guide backbone without any adapter, measured in every study: the baseline every ARM starts
from, which already favours the shorter response). Only labels the run has are counted (the safety
mini preset's test pairs carry PKU's safer label; the helpful label comes from the helpful scorer
on training pairs only).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from mobench.methods.preference_arm import config_from_json, load_adapters
from peft import PeftModel

from mobench.config import RunSpec
from mobench.models import load_causal_lm, load_tokenizer
from mobench.registry import get_method, get_task
from mobench.training import collate_pairs, sequence_logprobs, tokenize_pairs

ALPHAS = ((1.0, 0.0), (0.5, 0.5), (0.0, 1.0))
TRAIN_PAIRS = 160  # the first 160 training pairs: enough to see what was fitted


def pair_accuracy(
    model: Any,
    pairs: Sequence[Any],
    objectives: Sequence[str],
    pad: int,
    before: Callable[[], None],
) -> dict[str, Any]:
    collate = collate_pairs(pad)
    margins, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(pairs), 8):
            batch = collate(list(pairs[start : start + 8]))
            before()
            logps = sequence_logprobs(
                model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
            ).view(-1, 2)
            margins.append(logps[:, 0] - logps[:, 1])
            labels.append(batch["labels"])
    margin, label = torch.cat(margins), torch.cat(labels)
    out: dict[str, Any] = {"pairs": len(pairs), "mean_abs_margin": float(margin.abs().mean())}
    for j, objective in enumerate(objectives):
        known = label[:, j] >= 0
        if known.any():
            prefers_1 = (margin[known] < 0).long()
            out[objective] = float((prefers_1 == label[known, j]).float().mean())
    return out


def study(run_dir: Path) -> dict[str, Any]:
    spec = RunSpec.from_json(json.loads((run_dir / "spec.json").read_text()))
    task = get_task(spec.task)()
    splits = task.load(spec)
    tok = load_tokenizer(spec.guide_model)
    template = spec.templates.get(spec.guide_model)
    guide = run_dir / "guide"
    stored = json.loads((guide / "guide_config.json").read_text())
    method_name = stored["method"]
    # the guide's own training cut (max_length, max_prompt_length) for every row
    lengths = config_from_json(get_method(method_name).config_cls, stored["config"])
    sets = {
        split: tokenize_pairs(
            pairs, lambda p: task.render(p.prompt, tok, template), tok, task.objectives, lengths
        )
        for split, pairs in (("train", splits.train[:TRAIN_PAIRS]), ("test", splits.test))
    }
    result: dict[str, Any] = {
        "run_dir": f"{run_dir.parent.name}/{run_dir.name}",
        "method": method_name,
        "beta_r": stored["config"].get("beta_r"),
        "rows": [],
    }

    def measure(model: Any, what: str, before: Callable[[], None]) -> None:
        for split, pairs in sets.items():
            row = {"guide": what, "split": split}
            row.update(pair_accuracy(model, pairs, task.objectives, tok.pad_token_id, before))
            result["rows"].append(row)
            print(run_dir.name, json.dumps(row), flush=True)

    backbone, _ = load_causal_lm(spec.guide_model, dtype="float32", device="cpu")
    measure(backbone.eval(), "backbone (no adapter)", lambda: None)
    if method_name in ("parm", "uniarm"):
        model, _ = load_causal_lm(spec.guide_model, dtype="float32", device="cpu")
        method = get_method(method_name)(lengths)
        method.inject(model, stored["objectives"], tokenizer=None)
        load_adapters(model, guide / "adapters.safetensors")
        model.eval()
        columns = [task.objectives.index(o) for o in stored["objectives"]]
        for alpha in ALPHAS:
            stored_order = torch.tensor([alpha[c] for c in columns])
            measure(model, f"alpha={alpha}", lambda a=stored_order: model.preference_context.set(a))
    elif method_name == "genarm":
        for objective in stored["objectives"]:
            backbone, _ = load_causal_lm(spec.guide_model, dtype="float32", device="cpu")
            model = PeftModel.from_pretrained(backbone, str(guide / objective)).eval()
            measure(model, f"{objective} ARM", lambda: None)
    return result


def main() -> None:
    out, runs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    record = {
        "what": __doc__.split("\n\n")[0],
        "command": "python benchmarks/steering/arm_pair_accuracy.py " + " ".join(sys.argv[1:]),
        "studies": [study(r) for r in runs],
    }
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
