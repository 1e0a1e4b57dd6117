"""Fine-tuning on a synthetic task (arXiv 2509.16278, section 5): loss on the answer tokens only.

A row is one task example, ``prompt + answer`` (answer = answer text + EOS), fed with teacher
forcing: ``x = row[:-1]``, ``y = row[1:]`` with every target before the first answer token set to
-100, and right-padded with EOS (padding targets -100). So the loss is the mean over answer
tokens; a prompt's meta-tokens are read but never predicted.

Examples come from `metatokens.tasks` (split "train"; the learning curves score dev prompts, so no
test prompt is looked at while training): an endless stream, deterministic in the
seed, cut into micro-batches. Micro-batch ``b`` of process ``r`` holds examples
``(b * world + r) * B ... + B - 1`` of its phase, so its whole position is one integer (the
micro-batch counter, saved in every checkpoint) and a resumed run sees exactly the batches it
would have seen. Examples are generated in chunks of `CHUNK` with their own seeds, so resuming
regenerates at most one chunk.

With a curriculum (`metatokens.tasks.curriculum`, the paper's 5 phases of growing length and
difficulty) the micro-batches are split evenly between phases. A phase whose difficulty cannot
fit its length with this tokenizer (the structure needs a minimum number of tokens) has its
length raised to the shortest that works; the plan is printed and kept in run.json.

Models: a pre-trained metatokens run or model folder (``init``), a fresh model from a preset
(``from_scratch``, with the preset's tokenizer), or any Hugging Face causal LM (``hf_model``,
the paper's GPT-Neo baseline; no meta-tokens). ``yarn_scale`` puts YaRN on a RoPE model first,
extending its window from L to s * L, so that it can be fine-tuned at lengths up to s * L.

The run folder is laid out like a pre-training run (run.json, tokenizer.json, metrics.jsonl,
checkpoints/step-N with LATEST), and `loop.train_loop` does the optimisation. The
batches come from `task_batches.TaskBatches`. When the run ends, the summary and run.json get
``training_prompts``: per task, ``{"drawn", "distinct", "in_test", "in_dev"}`` over the whole run
(resumes included), the last two counted by hashing each prompt trained on into its split; both
must be 0 (`TaskBatches.prompt_counts`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from ..data.packing import tokenizer_hash
from ..errors import FinetuneError
from ..evaluation.loading import (
    LoadedModel,
    inference_settings,
    load_model,
    pretrain_rate,
    uses_meta,
)
from ..evaluation.scoring import needed_positions, score_examples
from ..fileio import atomic_write_text
from ..hf.baseline import HFCausalLM, load_hf_model, load_hf_tokenizer
from ..model.config import ConfigError, parse_value
from ..model.gpt import GPT
from ..model.yarn import apply_yarn
from ..runs.checkpoints import latest_checkpoint
from ..runs.folder import RunFolder
from ..tasks.base import Example
from ..tasks.registry import Phase, make_examples
from ..tokenizer.meta import MetaTokenizer
from .config import RunConfig, TrainConfig, load_run_config
from .loop import train_loop
from .pretrain import get_tokenizer, padded_vocab
from .setup import Dist, check_step_memory, run_precision, setup_distributed
from .task_batches import TaskBatches, TaskSpec, plan_phases, task_names

# Optimisation defaults for fine-tuning (TrainConfig's are pre-training's); all overridable.
FINETUNE_TRAIN = dict(batch_size=16, max_steps=500, lr=5e-4, min_lr=5e-5, warmup_steps=50, weight_decay=0.1,
                      eval_interval=100, log_interval=10, ckpt_interval=250, keep_last=2)


# ----------------------------------------------------------------------------- plan and settings


def parse_overrides(items: list[str]) -> tuple[dict[str, Any], list[str]]:
    """``train.KEY=VALUE`` items -> TrainConfig changes; ``model.KEY=VALUE`` items are passed on."""
    train: dict[str, Any] = {}
    model: list[str] = []
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in items:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in ("train", "model"):
            raise ConfigError(f"override {item!r} must look like train.KEY=VALUE or model.KEY=VALUE")
        if section == "model":
            model.append(item)
            continue
        if name not in names:
            raise ConfigError(f"unknown train setting {name!r} (known: {', '.join(sorted(names))})")
        train[name] = parse_value(text)
    return train, model


def make_train_config(**changes: Any) -> TrainConfig:
    """Fine-tuning defaults (FINETUNE_TRAIN) with `changes`, validated like pre-training's."""
    cfg = TrainConfig(**{**FINETUNE_TRAIN, **changes})
    RunConfig(train=cfg).validate()
    return cfg


# ----------------------------------------------------------------------------- the run


def _source_model(*, init, from_scratch, hf_model, tokenizer_path, model_overrides, seed, d, progress):
    """(LoadedModel, pretrain k or None, description) for a new run."""
    chosen = [name for name, value in (("--init", init), ("--from-scratch", from_scratch), ("--hf-model", hf_model)) if value]
    if len(chosen) != 1:
        raise FinetuneError("give exactly one of --init RUN, --from-scratch PRESET or --hf-model NAME_OR_PATH"
                            + (f" (got {', '.join(chosen)})" if chosen else ""))
    if model_overrides and hf_model:
        raise FinetuneError("model.* overrides apply with --from-scratch or --init, not to a Hugging Face model")
    if init:  # a trained model keeps its shape: only the settings of how it attends (attn_window) may change
        loaded = load_model(init, settings=inference_settings(model_overrides or []))
        return loaded, pretrain_rate(loaded.run_info), {"init": str(init)}
    if hf_model:
        model = HFCausalLM(load_hf_model(hf_model))
        loaded = LoadedModel(Path(str(hf_model)).name, str(hf_model), model, load_hf_tokenizer(hf_model), "hf")
        return loaded, None, {"hf_model": str(hf_model)}

    cfg = load_run_config(from_scratch, model_overrides)
    tokenizer = MetaTokenizer.from_file(tokenizer_path) if tokenizer_path else get_tokenizer(cfg, d, progress)
    model_cfg = cfg.model.replace(vocab_size=padded_vocab(tokenizer.vocab_size), meta_token_id=tokenizer.meta_token_id)
    torch.manual_seed(seed)
    loaded = LoadedModel(cfg.name, from_scratch, GPT(model_cfg), tokenizer, "metatokens")
    k = cfg.data.k if model_cfg.meta_attention else 0.0
    loaded.run_info = {"config": {"data": {"k": k}}}
    return loaded, k, {"from_scratch": from_scratch, "tokenizer": str(tokenizer_path) if tokenizer_path else None}


# Held-out examples of a fine-tuning run (its learning curves) come from the dev split, so that nothing
# during training ever looks at a test prompt; and under their own seed, so that the dev prompts of
# `metatokens evaluate --split dev` (seed = the run's seed), used to choose a recipe, are not the ones
# watched here either.
HELD_OUT_SEED_OFFSET = 7919


def _held_out(spec: TaskSpec, plan: list[Phase], tokenizer: MetaTokenizer, meta: bool,
              task: str | None = None) -> list[Example]:
    length, difficulty = plan[-1]
    return make_examples(task or spec.task, tokenizer, length=length, difficulty=difficulty, n=spec.eval_n,
                         seed=spec.seed + HELD_OUT_SEED_OFFSET, split="dev", meta=meta)


def make_evaluator(model, examples: list[Example] | dict[str, list[Example]], tokenizer: MetaTokenizer, device):
    """Answer loss, exact match and token accuracy on held-out examples at the final phase. With one
    example set per task (a mixture), each task's metrics are logged as ``val_exact_match/TASK`` and
    so on, and the plain names hold their mean over tasks."""
    sets = examples if isinstance(examples, dict) else {"": examples}

    def evaluate(_wrapped) -> dict[str, float]:
        out: dict[str, float] = {}
        for task, ex in sets.items():
            s = score_examples(model, ex, pad_id=tokenizer.eos_token_id, vocab_limit=tokenizer.vocab_size,
                               meta_token_id=tokenizer.meta_token_id, device=device)
            suffix = f"/{task}" if task else ""
            out.update({f"val_loss{suffix}": s.nll / max(s.tokens, 1), f"val_exact_match{suffix}": s.exact / max(s.examples, 1),
                        f"val_token_accuracy{suffix}": s.tokens_correct / max(s.tokens, 1)})
        if len(sets) > 1:
            for name in ("val_loss", "val_exact_match", "val_token_accuracy"):
                out[name] = sum(out[f"{name}/{t}"] for t in sets) / len(sets)
        return out

    return evaluate


def run_finetune(
    spec: TaskSpec,
    train_cfg: TrainConfig,
    out: str | Path,
    *,
    init: str | None = None,
    from_scratch: str | None = None,
    hf_model: str | None = None,
    tokenizer_path: str | None = None,
    model_overrides: list[str] | None = None,
    resume: bool = False,
    resume_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune and return train_loop's summary (plus the run folder and the phase plan).

    With `resume`, every setting comes from the run's run.json and `spec` / `train_cfg` are
    ignored, except `resume_steps`, which moves the end of the run (and its cosine schedule).
    """
    d = setup_distributed(train_cfg.device)
    with RunFolder(out, resume=resume, error=FinetuneError) as folder:
        return _finetune(folder, spec, train_cfg, d, init=init, from_scratch=from_scratch, hf_model=hf_model,
                         tokenizer_path=tokenizer_path, model_overrides=model_overrides, resume=resume,
                         resume_steps=resume_steps, progress=progress)


def _finetune(folder: RunFolder, spec: TaskSpec, train_cfg: TrainConfig, d: Dist, *, init, from_scratch, hf_model,
              tokenizer_path, model_overrides, resume, resume_steps, progress) -> dict[str, Any]:
    run_dir, saved_info = folder.path, None
    if resume:
        # Everything comes from the run itself: its settings, and a model of the right shape
        # (train_loop then restores weights, optimiser, RNG and the example position).
        info = saved_info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        saved = info["finetune"]
        spec = TaskSpec(**{f.name: saved[f.name] for f in dataclasses.fields(TaskSpec) if f.name in saved})
        spec.meta = "on" if saved["meta"] else "off"
        spec.yarn_scale = None  # already part of the checkpoint's model settings
        train_cfg = TrainConfig(**info["train"])
        if resume_steps is not None and resume_steps != train_cfg.max_steps:
            if len(saved.get("plan", [])) > 1:
                raise FinetuneError("a curriculum run cannot change its number of steps on resume (the phases would move)")
            train_cfg.max_steps = resume_steps
            info["train"]["max_steps"] = resume_steps
            atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2, default=str) + "\n")
        loaded = load_model(latest_checkpoint(run_dir))
        pretrain_k, meta = saved.get("pretrain_k"), bool(saved["meta"])
        if tokenizer_hash(loaded.tokenizer) != info["tokenizer_sha256"]:
            raise FinetuneError(f"{run_dir}: the checkpoint's tokenizer differs from the run's; refusing to resume")
        source = {k: saved.get(k) for k in ("init", "hf_model", "from_scratch")}
    else:
        loaded, pretrain_k, source = _source_model(init=init, from_scratch=from_scratch, hf_model=hf_model,
                                                   tokenizer_path=tokenizer_path, model_overrides=model_overrides,
                                                   seed=train_cfg.seed, d=d, progress=progress)
        if spec.yarn_scale is not None:
            apply_yarn(loaded.model, spec.yarn_scale)
        meta = uses_meta(loaded, spec.meta)
    model, tokenizer = loaded.model, loaded.tokenizer
    limit = loaded.max_positions
    if limit is not None and spec.max_len > limit:
        raise FinetuneError(f"--max-len {spec.max_len} does not fit the model's {limit} learned positions "
                            f"({loaded.pos_encoding}); use --max-len {limit - 8} or less")
    if isinstance(model, GPT):  # before any example is made: a batch of 10^8 would take hours to generate
        check_step_memory(model.config, train_cfg.batch_size, spec.max_len, d.device, what="--batch-size",
                          error=FinetuneError)
    tasks = task_names(spec.task)
    if spec.weights is not None and len(spec.weights) != len(tasks):
        raise FinetuneError(f"{len(spec.weights)} --task-weights for {len(tasks)} tasks ({', '.join(tasks)})")
    plans = [plan_phases(spec, tokenizer, meta, task) for task in tasks]
    if len({len(p) for p in plans}) != 1:
        raise FinetuneError("the mixture's tasks got curricula of different lengths")
    plan = plans[0] if len(tasks) == 1 else plans
    accum = max(1, train_cfg.grad_accum // d.world)
    batches = TaskBatches(tasks, tokenizer, plan, batch_size=train_cfg.batch_size, seed=spec.seed, meta=meta,
                          total_batches=train_cfg.max_steps * accum, max_positions=limit, rank=d.rank, world=d.world,
                          weights=spec.weights)
    # A row too long for the model fails here, not mid-run. Last phase first, so that phase 0's
    # examples, which the first step needs, are the ones left in the loader's small chunk cache.
    for phase in reversed(range(len(plans[0]))):
        probe = [e for b in range(max(1, math.ceil(len(batches.slots) / batches.batch_size)))
                 for e in batches.examples(phase * batches.per_phase + b)]
        width = needed_positions(probe)
        if limit is not None and width > limit:
            raise FinetuneError(f"{spec.task} rows at length {plans[0][phase].length} need {width} positions but the model "
                                f"has {limit}; use a smaller --max-len")
    if len(tasks) == 1:
        held_out: list[Example] | dict[str, list[Example]] = _held_out(spec, plans[0], tokenizer, meta)
    else:
        held_out = {task: _held_out(spec, p, tokenizer, meta, task) for task, p in zip(tasks, plans)}

    # Everything that can fail on bad input has run; only now does the run folder appear.
    folder.create()
    if isinstance(model, GPT):
        model_settings = model.config.to_dict()
    else:
        model_settings = {"hf_config": model.hf.config.to_dict()}
    info = {
        "kind": "finetune",
        "finetune": {**dataclasses.asdict(spec), "meta": meta, "plan": [list(p) for p in plans[0]],
                     "tasks": tasks, **({"plans": [[list(p) for p in pl] for pl in plans]} if len(tasks) > 1 else {}),
                     "pretrain_k": pretrain_k, **source},
        "model": model_settings,
        "train": dataclasses.asdict(train_cfg),
        "tokenizer_sha256": tokenizer_hash(tokenizer),
        "params": model.num_params(),
        "world_size": d.world,
        "torch": torch.__version__,
        "precision": run_precision(train_cfg.dtype, d.device, saved_info).to_dict(),
    }
    if d.main and not resume:
        tokenizer.save(run_dir / "tokenizer.json")
        atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2, default=str) + "\n")
        phases = ", ".join(f"{length} {difficulty}" for length, difficulty in plans[0])
        share = f" (shares {':'.join(map(str, batches.weights))})" if len(tasks) > 1 else ""
        print(f"{run_dir}: fine-tuning {loaded.name} ({info['params']:,} parameters, {loaded.pos_encoding}"
              f"{', meta-tokens' if meta else ', no meta-tokens'}) on {spec.task}{share}: {phases}")
        window = model.config.block_size if isinstance(model, GPT) else None
        if limit is None and window is not None and spec.max_len > window:
            # RoPE / NoPE read any length, so this is allowed, but it is not the model's trained window
            hint = f"; --yarn-scale {math.ceil(spec.max_len / window)} extends it with YaRN" if loaded.pos_encoding == "rope" else ""
            print(f"{run_dir}: note: --max-len {spec.max_len} is beyond the model's {window}-token window "
                  f"({loaded.pos_encoding}: positions past it were never trained){hint}", file=sys.stderr)
    evaluate = make_evaluator(model, held_out, tokenizer, d.device)
    summary = train_loop(model, batches, train_cfg, run_dir, tokenizer=tokenizer, evaluate=evaluate, resume=resume,
                         d=d, progress=progress, run_info=info)
    summary["run_dir"] = str(run_dir)
    summary["plan"] = plan
    summary["training_prompts"] = batches.prompt_counts()
    if d.main:  # run.json as it is on disk (a resume may have moved max_steps), plus the record
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        info["training_prompts"] = summary["training_prompts"]
        atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2, default=str) + "\n")
    return summary
