"""Numbers a reviewer can trust (issue 13, items 1, 2, 6, 7): model identity, BOS as each model
expects it, input validation, scores that do not depend on the thread count."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from mobench.cli import app
from mobench.config import ConfigError, RunSpec
from mobench.data import DataError
from mobench.models import ModelError, model_identity
from mobench.pipeline import execute_run, guide_cache_key, rescore
from mobench.resolve import resolve_spec
from mobench.runs import RunDirectory, RunDirError
from mobench.training import encode_prompt, uses_bos
from tests.conftest import build_llama, build_tokenizer

# ------------------------------------------------------------------------- 1. model identity


def _model_dir(path: Path, seed: int) -> str:
    tok = build_tokenizer()
    build_llama(tok, seed=seed).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_identity_follows_the_weights_not_the_name(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    folder = _model_dir(tmp_path / "m", seed=0)
    first = model_identity(folder)
    assert first.startswith("local:") and model_identity(folder) == first  # stable
    _model_dir(tmp_path / "m", seed=1)  # same path, same shapes and sizes, other weights
    assert model_identity(folder) != first


def test_spec_hash_and_guide_key_follow_the_weights(
    unit_preset: Any, tiny_model_dir: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    spec = resolve_spec("safety", "genarm", "unit", base_model=str(folder), device="cpu")
    assert spec.models[str(folder)] == model_identity(str(folder))
    splits = type("S", (), {"train": []})()
    key = guide_cache_key(spec, splits)
    _model_dir(folder, seed=7)  # retrained in place: the name is unchanged
    again = resolve_spec("safety", "genarm", "unit", base_model=str(folder), device="cpu")
    assert again.hash8 != spec.hash8  # another run directory
    assert guide_cache_key(again, splits) != key  # no cached guide of the old weights


def test_packaged_alias_choice_is_explicit(monkeypatch: Any) -> None:
    from mobench import models

    monkeypatch.setenv("MOBENCH_PACKAGED_COPY", "nonsense")
    with pytest.raises(ModelError, match="MOBENCH_PACKAGED_COPY"):
        model_identity("smollm2-135m-instruct")
    # a cache that cannot be read is an error naming the way out, never a silent GGUF fallback
    monkeypatch.setenv("MOBENCH_PACKAGED_COPY", "auto")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("permission denied")

    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", broken)
    with pytest.raises(ModelError, match="MOBENCH_PACKAGED_COPY=gguf"):
        models.resolve_model_source("smollm2-135m-instruct")


def test_old_run_directory_gives_a_clear_error(
    unit_preset: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    spec = resolve_spec("safety", "genarm", "unit", device="cpu")
    old = {k: v for k, v in spec.to_json().items() if k not in ("models", "scorer_dtype")}
    old["schema_version"] = 1
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "spec.json").write_text(json.dumps(old))
    with pytest.raises(RunDirError, match="spec schema 1"):
        RunDirectory.open(tmp_path / "run", spec)
    with pytest.raises(ConfigError, match="schema_version 1"):
        RunSpec.from_json(old)


def test_report_refuses_to_rank_runs_on_different_weights(
    unit_preset: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from mobench.report import build_report

    monkeypatch.setenv("MOBENCH_GUIDE_CACHE", str(tmp_path / "guides"))
    spec = resolve_spec("safety", "genarm", "unit", device="cpu")
    execute_run(spec, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    # b: the same model names, other weights behind the base model (as after an alias switch)
    stored = json.loads((tmp_path / "b" / "spec.json").read_text())
    stored["models"][spec.base_model] = "hub:someone/other@0123"
    (tmp_path / "b" / "spec.json").write_text(json.dumps(stored))
    result = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "report", bench_dir=None)
    data = json.loads(result.data_json.read_text())
    assert result.n_ranked == 0
    reasons = [r["reason"] for r in data["runs"]]
    assert all(spec.base_model in r and "different weights" in r for r in reasons)


# ---------------------------------------------------------------------------------- 2. BOS


def build_llama2_style_tokenizer(path: Path) -> Any:
    """A BPE tokenizer.json whose TemplateProcessing post-processor adds ``<s>``, saved with
    ``add_bos_token: true`` as Llama-2 repos are, and reloaded the way mobench loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(["hello world, how are you today?"] * 20, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "LlamaTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(path)


def test_bos_follows_what_the_tokenizer_does(tmp_path: Path) -> None:
    tok = build_llama2_style_tokenizer(tmp_path / "llama2")
    bos = tok.bos_token_id
    assert tok("hello")["input_ids"][0] == bos  # the tokenizer itself adds <s> ...
    assert uses_bos(tok)  # ... whatever add_bos_token says after the reload
    ids = encode_prompt(tok, "hello world")
    assert ids == [bos, *tok("hello world", add_special_tokens=False)["input_ids"]]
    assert encode_prompt(tok, "<s>hello").count(bos) == 1  # the double-BOS guard
    smol_like = build_tokenizer()  # ChatML tokenizer without a BOS post-processor
    assert not uses_bos(smol_like)
    assert encode_prompt(smol_like, "hi") == smol_like("hi", add_special_tokens=False)["input_ids"]


def test_training_pairs_get_the_bos_rule(tmp_path: Path) -> None:
    from mobench.data import PreferencePair
    from mobench.training import ARMTrainingConfig, tokenize_pairs

    tok = build_llama2_style_tokenizer(tmp_path / "llama2")
    pair = PreferencePair(id="p", prompt="hello", responses=("how", "you"), labels={"h": 0})
    (tokenized,) = tokenize_pairs([pair], lambda p: "hello", tok, ["h"], ARMTrainingConfig())
    assert tokenized.prompt_ids[0] == tok.bos_token_id


def test_run_records_the_bos_decision(unit_preset: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MOBENCH_GUIDE_CACHE", str(tmp_path / "guides"))
    spec = resolve_spec("safety", "genarm", "unit", device="cpu")
    execute_run(spec, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "models.json").read_text())
    assert record["base"]["bos"] is False and record["guide"]["bos"] is False
    assert record["base"]["identity"] == spec.models[spec.base_model]
    scorers = json.loads((tmp_path / "run" / "scorers.json").read_text())
    assert all(s["bos"] is False for s in scorers.values())


# ------------------------------------------------------------------------------- 6. inputs


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-new-tokens", "-5"], "--max-new-tokens must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--set", "generation.max_new_tokens=0"], "max_new_tokens=0"),
        (["--set", 'generation.max_new_tokens="x"'], "wrong type"),
        (["--set", "generation.temperature=0"], "temperature=0"),
        (["--set", "generation.top_p=1.5"], "top_p=1.5"),
        (["--set", "method.learning_rate=-1"], "learning_rate=-1"),
        (["--set", "method.per_device_batch_size=0"], "per_device_batch_size=0"),
        (["--set", "method.epochs=true"], "wrong type"),
        (["--set", "preset.split_sizes=[1,2,0]"], "split_sizes"),
        (["--set", "preset.test_limit=0"], "test_limit=0"),
        (["--set", 'preset.scorer_dtype="fp8"'], "unknown dtype"),
    ],
)
def test_bad_numbers_stop_before_anything_runs(
    unit_preset: Any, tmp_path: Path, args: list[str], words: str
) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--method",
            "genarm",
            "--task",
            "safety",
            "--preset",
            "unit",
            "--out",
            str(out),
            *args,
        ],
    )
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split())
    assert not out.exists()  # nothing started


def test_hh_file_in_another_schema_is_refused(tmp_path: Path) -> None:
    from mobench.tasks.formats import load_hh_file

    path = tmp_path / "helpful-base" / "train.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"prompt": "hi", "response_0": "a", "response_1": "b"}) + "\n")
    with pytest.raises(DataError, match=r"not an HH-RLHF row .*expected chosen, rejected"):
        load_hh_file(path, skip_malformed=True)


def test_hh_missing_column_is_an_error_not_a_skip(tmp_path: Path) -> None:
    from mobench.tasks.formats import load_hh_file

    good = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    path = tmp_path / "helpful-base" / "train.jsonl"
    path.parent.mkdir()
    rows = [good] * 40 + [{"chosen": good["chosen"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="row 41: missing column"):
        load_hh_file(path, skip_malformed=True)


# -------------------------------------------------------- 7. scores independent of threads


def test_scorers_run_in_fp32_by_default_and_say_so(unit_preset: Any) -> None:
    from mobench.registry import get_task

    spec = resolve_spec("safety", "genarm", "unit", device="cpu", dtype="bfloat16")
    assert spec.dtype == "bfloat16" and spec.scorer_dtype == "float32"
    scorer = get_task("safety")().scorers(spec, "cpu")["helpful"]
    assert scorer.model.dtype == torch.float32  # type: ignore[attr-defined]
    assert "dtype=float32" in scorer.fingerprint
    bf16 = dataclasses.replace(spec, scorer_dtype="bfloat16")
    other = get_task("safety")().scorers(bf16, "cpu")["helpful"]
    assert other.fingerprint != scorer.fingerprint  # the dtype is part of the fingerprint


def test_rescoring_refuses_changed_weights(
    unit_preset: Any, tiny_model_dir: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MOBENCH_GUIDE_CACHE", str(tmp_path / "guides"))
    spec = resolve_spec("safety", "genarm", "unit", device="cpu")
    execute_run(spec, tmp_path / "run")
    changed = dataclasses.replace(
        spec, models={**spec.models, spec.base_model: "local:0000000000000000"}
    )
    with pytest.raises(RunDirError, match="changed since the run was made"):
        rescore(RunDirectory(tmp_path / "run", changed))
