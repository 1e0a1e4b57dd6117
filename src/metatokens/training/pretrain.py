"""Pre-training: corpus -> tokenizer -> packed tokens -> meta-token injection -> train_loop.

Run folder layout:
    run.json            resolved settings, tokenizer hash and corpus, written at the start
    tokenizer.json      the run's tokenizer
    metrics.jsonl       one JSON row per log / evaluation step
    checkpoints/        step-NNNNNNNN model folders (+ optimizer, RNG, data position), LATEST
    .lock               while a process runs in the folder (runs.folder.RunFolder); a second one is refused
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..data.inject import MetaBlockLoader, val_batches
from ..data.packing import PackedData, prepare_data, tokenizer_hash, train_tokenizer_on
from ..errors import CheckpointError, RunDirError, TrainingError
from ..fileio import atomic_write_text
from ..model.config import IGNORE_INDEX
from ..model.family import build_model
from ..runs.checkpoints import check_resume_steps, resolve_model_dir
from ..runs.folder import RunFolder, read_run_json
from ..runs.model_folder import load_pretrained
from ..tokenizer.meta import MetaTokenizer
from .config import RunConfig
from .loop import train_loop
from .setup import Dist, check_step_memory, run_precision, setup_distributed


def padded_vocab(n: int, multiple: int = 64) -> int:
    """Embedding rows for n tokens, rounded up so matrix shapes stay fast on GPUs (nanoGPT: 50304)."""
    return -(-n // multiple) * multiple


def _rank0_first(d: Dist, fn):
    """Run fn on rank 0 (which fills caches), then on the other ranks (which reuse them)."""
    result = fn() if d.main else None
    d.barrier()
    return result if d.main else fn()


def get_tokenizer(cfg: RunConfig, d: Dist, progress: bool) -> MetaTokenizer:
    data = cfg.data
    if data.tokenizer == "gpt2":
        return MetaTokenizer.from_gpt2()
    if data.tokenizer:
        return MetaTokenizer.from_file(data.tokenizer)
    return _rank0_first(d, lambda: train_tokenizer_on(
        data.source, data.vocab_size, cache_dir=data.cache_dir, text_field=data.text_field,
        hf_config=data.hf_config, split=data.split, max_documents=data.max_documents,
        show_progress=progress and d.main,
    ))


def get_data(cfg: RunConfig, tokenizer: MetaTokenizer, d: Dist, progress: bool) -> PackedData:
    data = cfg.data
    return _rank0_first(d, lambda: prepare_data(
        data.source, tokenizer, data.cache_dir, val_fraction=data.val_fraction, text_field=data.text_field,
        hf_config=data.hf_config, split=data.split, max_documents=data.max_documents, progress=progress and d.main,
    ))


def make_evaluator(cfg: RunConfig, packed: PackedData, meta_id: int, d: Dist):
    """Validation loss per text token (meta targets carry no loss) and bits per byte."""
    t, block = cfg.train, cfg.model.block_size
    if len(packed.val) <= block + 1:
        raise ValueError(f"the validation split has {len(packed.val)} tokens, fewer than one block of {block}; "
                         "use a larger corpus or data.val_fraction")

    # the same batches at every evaluation (fixed seed), so they are made once
    batches = list(val_batches(packed.val, block, t.batch_size, cfg.data.k, meta_id, seed=t.seed + 1,
                               max_batches=t.eval_batches))

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        usable = len(batches) - len(batches) % d.world if d.world > 1 else len(batches)
        loss_sum, count = 0.0, 0
        for i in range(d.rank, usable, d.world):
            x, y = (b.to(d.device) for b in batches[i])
            n = int((y != IGNORE_INDEX).sum())
            if n:
                _, loss = model(x, y)
                loss_sum += float(loss) * n
                count += n
        loss_sum, count = d.all_sum(loss_sum, count)
        val_loss = loss_sum / max(count, 1)
        return {"val_loss": val_loss, "val_ppl": float(torch.tensor(val_loss).exp()),
                "val_bpb": packed.bits_per_byte(val_loss, "val")}

    return evaluate


def _check_resume(run_dir: Path, cfg: RunConfig, tok_hash: str) -> None:
    saved = read_run_json(run_dir, "config", "tokenizer_sha256")
    if saved["tokenizer_sha256"] != tok_hash:
        raise TrainingError(f"{run_dir}: resuming with a different tokenizer than the run was started with; refusing")
    model = saved["config"].get("model")
    if not isinstance(model, dict):
        raise RunDirError(f"{run_dir / 'run.json'}: no model settings under config; the run's settings are damaged")
    if model != cfg.model.to_dict():
        changed = sorted(k for k, v in cfg.model.to_dict().items() if model.get(k) != v)
        raise TrainingError(f"{run_dir}: resuming with different model settings ({', '.join(changed)}); refusing")


def run_pretrain(cfg: RunConfig, out: str | Path, *, resume: bool = False, init: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Pre-train into the run folder `out` (new or empty, or with resume a run folder; locked meanwhile).

    A new run that fails before its first checkpoint leaves nothing behind.
    """
    d = setup_distributed(cfg.train.device)
    with RunFolder(out, resume=resume) as folder:
        return _pretrain(cfg, folder, d, resume=resume, init=init, progress=progress)


def _pretrain(cfg: RunConfig, folder: RunFolder, d: Dist, *, resume: bool, init: str | None, progress: bool) -> dict[str, Any]:
    run_dir, init_model, saved = folder.path, None, None
    if resume:
        saved = read_run_json(run_dir, "config", "tokenizer_sha256")  # a damaged run.json is named before any work
        check_resume_steps(run_dir, cfg.train.max_steps, "train.max_steps", allow_equal=True)
        tokenizer = MetaTokenizer.from_file(run_dir / "tokenizer.json")
    elif init:
        init_model, tokenizer, _ = load_pretrained(resolve_model_dir(init))
        if tokenizer is None:
            raise CheckpointError(f"{init}: the model folder has no tokenizer.json")
    else:
        tokenizer = get_tokenizer(cfg, d, progress)
    if init_model is not None:
        cfg.model = init_model.config
    else:
        cfg.model = cfg.model.replace(vocab_size=padded_vocab(tokenizer.vocab_size), meta_token_id=tokenizer.meta_token_id)
    tok_hash = tokenizer_hash(tokenizer)
    if resume:
        _check_resume(run_dir, cfg, tok_hash)
    check_step_memory(cfg.model, cfg.train.batch_size, cfg.model.block_size, d.device)  # before tokenising a corpus
    packed = get_data(cfg, tokenizer, d, progress)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)  # GPT, or the family model of an `import-hf` folder given to --init
    if init_model is not None:
        model.load_state_dict(init_model.state_dict())
    loader = MetaBlockLoader(packed.train, block_size=cfg.model.block_size, batch_size=cfg.train.batch_size,
                             k=cfg.data.k, meta_id=tokenizer.meta_token_id, seed=cfg.train.seed,
                             rank=d.rank, world_size=d.world)
    evaluate = make_evaluator(cfg, packed, tokenizer.meta_token_id, d)

    # Everything that can fail on bad input has run; only now does the run folder appear.
    folder.create()
    info = {"config": cfg.to_dict(), "tokenizer_sha256": tok_hash, "init": init, "world_size": d.world,
            "data": {k: packed.meta.get(k) for k in ("train_tokens", "val_tokens", "train_bytes", "val_bytes")},
            "params": model.num_params(), "torch": torch.__version__,
            "precision": run_precision(cfg.train.dtype, d.device, saved).to_dict()}
    if d.main and not resume:
        tokenizer.save(run_dir / "tokenizer.json")
        atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")
        print(f"{run_dir}: {model.num_params():,} parameters, {packed.meta.get('train_tokens', len(packed.train)):,} "
              f"training tokens, {d.world} process(es) on {d.device}")
    return train_loop(model, loader, cfg.train, run_dir, tokenizer=tokenizer, evaluate=evaluate, resume=resume,
                      d=d, progress=progress, run_info=info)
