"""`metatokens evaluate`: task accuracy by length, or perplexity by position, for several models."""

from __future__ import annotations

import argparse

from ..devices import resolve_device
from ..errors import EvaluationError
from ..evaluation.loading import inference_settings, load_model, unique_names
from ..evaluation.perplexity import evaluate_perplexity
from ..evaluation.report import perplexity_markdown, task_markdown, write_report
from ..evaluation.tasks import EVAL_SPLITS, evaluate_task
from ..fileio import output_lock
from .common import beside_model, hide_transformers_progress


def _lengths(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--lengths must be comma-separated integers such as 64,128,256, got {text!r}") from None
    if not values:
        raise ValueError("--lengths is empty")
    return values


def _every_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be auto or a positive integer, got {value}")
    return value


def add_command(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy by prompt length on a synthetic task, or perplexity by position on documents",
        description="Evaluate run or model folders side by side. With --task: exact match and token accuracy per "
                    "length bin (teacher-forced argmax, which equals greedy decoding), 95%% Wilson intervals. With "
                    "--perplexity DATA: loss and perplexity per text token by position within the context. "
                    "Writes JSON, markdown and PNG to --out.",
    )
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="RUN",
                   help="run folders (their latest checkpoint) or model folders, metatokens or Hugging Face")
    p.add_argument("--names", help="comma-separated display names, one per --checkpoint")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help="list_recall, segment_counting, parity or copying")
    what.add_argument("--perplexity", metavar="DATA", help="documents: builtin, a local .txt/.jsonl/.parquet file or "
                      "folder, or hf:NAME (e.g. hf:pg19; only touched when named)")
    p.add_argument("--out", help="output folder (default: eval/ inside the first --checkpoint's run folder)")
    p.add_argument("--seed", type=int, default=0, help="seeds the test examples / meta-token positions (default 0)")
    p.add_argument("--split", default="test", help="with --task: the task prompts scored, test (default) or dev (for "
                   "choosing a recipe without looking at the test prompts); with --perplexity: the Hugging Face split "
                   "(default test)")
    p.add_argument("--yarn-scale", type=float, help="evaluate RoPE models with YaRN: window L -> s*L (L = the "
                   "pre-training window); other models as they are")
    p.add_argument("--batch-size", type=int, default=16, help="examples or rows per forward pass, at least 1 (default 16)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE",
                   help="evaluate metatokens models with an inference-time setting changed (repeatable): "
                   "model.attn_window=W lets self-attention see only the last W positions and the meta-tokens, "
                   "null switches a trained window off; model.attn_sinks=N keeps the first N positions in the window too")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    t = p.add_argument_group("task accuracy")
    t.add_argument("--lengths", default="64,128,256", help="prompt-length bins, comma-separated (default 64,128,256)")
    t.add_argument("--n", type=int, default=100, help="test examples per length bin (default 100)")
    t.add_argument("--difficulty", default="medium", help="medium (default), hard, extra-hard or long")
    t.add_argument("--meta", choices=("auto", "on", "off"), default="auto",
                   help="tasks' meta-token variant (auto: what the model was fine-tuned / pre-trained with)")
    t.add_argument("--skip-unfit", action="store_true", help="mark lengths beyond an APE model's table as not "
                   "applicable instead of refusing")
    q = p.add_argument_group("perplexity")
    q.add_argument("--context", type=int, help="tokens per row (default: each model's window)")
    q.add_argument("--buckets", type=int, default=8, help="position buckets within the context (default 8)")
    q.add_argument("--meta-every", default="auto", metavar="K|auto|none",
                   help="meta-tokens per token, placed at random positions as in pre-training (e.g. 0.1); auto: the "
                   "run's pre-training rate; none: no meta-tokens")
    q.add_argument("--rows", type=int, default=64, help="context rows scored per model (default 64)")
    q.add_argument("--every", type=_every_arg, default="auto", metavar="R|auto",
                   help="score every R-th document; auto (default): the pre-training's validation documents when "
                   "the models were pre-trained on this source (every 200th for val_fraction 0.005), else every document")
    q.add_argument("--max-documents", type=int, help="read at most this many documents")
    q.add_argument("--text-field", default="text", help="text field of JSONL / Parquet / HF rows (default text)")
    q.add_argument("--hf-config", help="Hugging Face dataset configuration")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.no_progress:
        hide_transformers_progress()
    args.device = resolve_device(args.device)  # bad input fails before the (slow) model load
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names is not None and len(names) != len(args.checkpoint):
        raise ValueError(f"--names has {len(names)} names for {len(args.checkpoint)} checkpoints")
    lengths = _lengths(args.lengths) if args.task else None  # bad input fails before the (slow) model loads
    settings = inference_settings(args.overrides)
    if args.task and args.split not in EVAL_SPLITS:
        raise ValueError(f"--split with --task takes test or dev, got {args.split!r}")
    models = [load_model(path, args.device, names[i] if names else None, settings) for i, path in enumerate(args.checkpoint)]
    unique_names(models)
    progress = not args.no_progress
    if args.task:
        result = evaluate_task(models, args.task, lengths, n=args.n, seed=args.seed,
                               difficulty=args.difficulty, yarn_scale=args.yarn_scale, meta=args.meta,
                               skip_unfit=args.skip_unfit, split=args.split, batch_size=args.batch_size, device=args.device,
                               progress=progress)
        print(task_markdown(result), end="")
    else:
        result = evaluate_perplexity(models, args.perplexity, context=args.context, buckets=args.buckets,
                                     meta=args.meta_every, rows=args.rows, batch_size=args.batch_size, seed=args.seed,
                                     every=args.every, max_documents=args.max_documents, text_field=args.text_field,
                                     hf_config=args.hf_config, split=args.split, yarn_scale=args.yarn_scale,
                                     device=args.device, progress=progress)
        print(perplexity_markdown(result), end="")
    out = args.out or beside_model(args.checkpoint[0], "eval")
    with output_lock(out, EvaluationError):  # one writer of the folder at a time
        paths = write_report(result, out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
