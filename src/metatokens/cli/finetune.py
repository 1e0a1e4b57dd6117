"""`metatokens finetune`: fine-tune on a synthetic task with the loss on answer tokens only."""

from __future__ import annotations

from ..errors import FinetuneError
from ..training.finetune import make_train_config, parse_overrides, run_finetune
from ..training.task_batches import TaskSpec
from .common import check_training_flags, hide_transformers_progress, run_training


def add_command(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pre-trained run, a fresh model or a Hugging Face LM on a synthetic task",
        description="Fine-tune on a synthetic task (loss on answer tokens only). Start from exactly one of "
                    "--init, --from-scratch or --hf-model, or continue a run with --resume. "
                    "YaRN set-up mirroring the paper's 4k/8k at our sizes: pre-train at L, fine-tune at 2L with "
                    "--yarn-scale 2, evaluate up to 4L with `metatokens evaluate --yarn-scale 4`.",
    )
    src = p.add_argument_group("where the model comes from")
    src.add_argument("--init", help="pre-trained run or model folder (metatokens or a fine-tuned Hugging Face run)")
    src.add_argument("--from-scratch", metavar="PRESET", help="a fresh model from a pre-training preset (e.g. tiny) "
                     "and the preset's tokenizer")
    src.add_argument("--hf-model", metavar="NAME_OR_PATH", help="a Hugging Face causal LM (e.g. EleutherAI/gpt-neo-125M "
                     "from the local cache, or a folder) as the baseline; it gets the tasks without meta-tokens")
    src.add_argument("--tokenizer", help="with --from-scratch: a tokenizer.json instead of training the preset's")
    src.add_argument("--resume", action="store_true", help="continue the run in --out with its saved settings "
                     "(--steps may move its end)")
    p.add_argument("--out", required=True, help="run folder to write (checkpoints, metrics.jsonl, run.json)")
    task = p.add_argument_group("task")
    task.add_argument("--task", default="list_recall", help="list_recall, segment_counting, parity or copying; several "
                      "comma-separated (or all) fine-tune on a mixture, with held-out metrics per task")
    task.add_argument("--task-weights", metavar="W1,W2,...", help="a mixture's share of each --task, as positive "
                      "integers (e.g. 3,1,1,3; default equal shares)")
    task.add_argument("--max-len", type=int, default=128, help="longest prompt in tokens; prompts have 0.75 L to L "
                      "tokens and the answer follows (default 128)")
    task.add_argument("--difficulty", help="medium, hard, extra-hard or long (default medium; with --curriculum the "
                      "phases climb medium -> hard -> extra-hard unless this is given)")
    task.add_argument("--curriculum", action="store_true", help="phases of growing prompt length (paper: 5 phases)")
    task.add_argument("--phases", type=int, default=5, help="number of curriculum phases (default 5)")
    task.add_argument("--meta", choices=("auto", "on", "off"), default="auto",
                      help="use the tasks' meta-token variant (auto: when the model was pre-trained with meta-tokens)")
    task.add_argument("--eval-n", type=int, default=64, help="held-out (dev split) examples scored at each evaluation (default 64)")
    opt = p.add_argument_group("optimisation (defaults: metatokens.training.finetune.FINETUNE_TRAIN)")
    opt.add_argument("--max-steps", "--steps", dest="steps", type=int, help="optimiser steps (default 500; the same "
                     "flag as pretrain's --max-steps, --steps also works)")
    opt.add_argument("--batch-size", type=int, help="examples per micro-batch (default 16)")
    opt.add_argument("--lr", type=float, help="peak learning rate (default 5e-4; the final one is a tenth of it)")
    opt.add_argument("--seed", type=int, default=0, help="seeds the example stream, the model init and dropout (default 0)")
    opt.add_argument("--yarn-scale", type=float, help="extend a RoPE model's window from L to s*L with YaRN before "
                     "fine-tuning at lengths up to s*L")
    opt.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    opt.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="any train.* setting (e.g. train.warmup_steps=20), model.* with --from-scratch, or model.attn_window=W "
                     "and model.attn_sinks=N with --init (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.no_progress:
        hide_transformers_progress()
    check_training_flags(args, args.steps, ("finetune", "train", "tokenizer_sha256"))

    train, model_overrides = parse_overrides(args.overrides)
    if args.steps is not None:
        train["max_steps"] = args.steps
    if args.batch_size is not None:
        train["batch_size"] = args.batch_size
    if args.lr is not None:
        train["lr"] = args.lr
        train.setdefault("min_lr", args.lr / 10)
    if args.device:
        train["device"] = args.device
    train.setdefault("seed", args.seed)
    weights = None
    if args.task_weights:
        try:
            weights = [int(w) for w in args.task_weights.split(",")]
        except ValueError:
            raise FinetuneError(f"--task-weights must be comma-separated positive integers, got {args.task_weights!r}") from None
    spec = TaskSpec(task=args.task, weights=weights, max_len=args.max_len, difficulty=args.difficulty, curriculum=args.curriculum,
                    phases=args.phases, meta=args.meta, seed=args.seed, eval_n=args.eval_n, yarn_scale=args.yarn_scale)
    return run_training("finetune", args.out, lambda: run_finetune(
        spec, make_train_config(**train), args.out, init=args.init, from_scratch=args.from_scratch,
        hf_model=args.hf_model, tokenizer_path=args.tokenizer, model_overrides=model_overrides, resume=args.resume,
        resume_steps=args.steps if args.resume else None, progress=not args.no_progress),
        ("train_loss", "val_loss", "val_exact_match", "val_token_accuracy"))
