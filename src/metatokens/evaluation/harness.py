"""The synthetic tasks as a task folder for EleutherAI's lm-evaluation-harness (`metatokens tasks lm-eval`).

`write_lm_eval_pack(checkpoint, out, ...)` writes, for every task and length, the prompts that
`metatokens evaluate --checkpoint CHECKPOINT --task TASK --lengths L` scores: the same
`make_examples` call (the checkpoint's tokenizer, length, difficulty, n, seed, split, and the
meta-token variant `uses_meta` picks), so the same test prompts under the same hash rule. Per task
and length the folder holds

- ``data/TASK_L.jsonl``: one row per prompt, ``{"prompt": ..., "answer": ...}``. The prompt is the
  text with ``<|meta|>`` where each meta-token belongs; the exported tokenizer turns that text into
  the meta id, as a transformers tokenizer does with any special token. The answer starts with a
  space, because every prompt ends with "Answer:".
- ``metatokens_TASK_L.yaml``: a `generate_until` task read from that file (``dataset_path: json``,
  the file named by its absolute path, as the harness's own local-file tasks do), greedy, stopping
  at ``<|endoftext|>`` (the harness adds the model's own EOS as well), and scored by ``exact_match``:
  the generated text equals the answer. Tagged ``metatokens`` (every task of the folder) and
  ``metatokens_TASK`` (its lengths).

Why the harness's exact match is `metatokens evaluate`'s, prompt by prompt: evaluate counts an
example right when the teacher-forced argmax is right at every answer token and at the EOS after
it, which is when greedy decoding writes the answer and then stops. The harness decodes greedily
with room for the longest answer and its EOS (``max_gen_toks``), so a right answer is followed by
EOS and its text is the answer, while a wrong token or a token after the answer changes the text.
The one way the two could differ is a model that spells the answer's text with other tokens.

The writer checks its own output: each prompt text, tokenized as a transformers tokenizer reads the
checkpoint's tokenizer.json (special tokens found in the text), gives the prompt's ids exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from tokenizers import Tokenizer

from .. import __version__
from ..data.packing import tokenizer_hash
from ..errors import EvaluationError, TaskError
from ..fileio import atomic_folder, holds_output, read_json_object
from ..hf.hub import _check_out_dir, is_marked_output
from ..runs.checkpoints import resolve_model_dir
from ..tasks.base import Example
from ..tasks.registry import TASKS, get_task, make_examples
from ..tokenizer.backend import EOS_TOKEN, META_TOKEN
from ..tokenizer.meta import MetaTokenizer
from .loading import EXPORT_MODEL_TYPE, load_model, uses_meta
from .scoring import prompts_digest
from .tasks import EVAL_SPLITS

PACK_MARKER = "metatokens_lm_eval.json"  # written last: the settings and every file, so --overwrite knows the folder
PACK_FORMAT = "metatokens-lm-eval"
TAG = "metatokens"
# Config fields from which the harness takes a model's longest input (lm_eval.models.utils.resolve_max_length);
# an export's block_size is its max_position_embeddings (MetaTokensConfig.attribute_map).
WINDOW_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "block_size")


def pack_task_name(task: str, length: int, *, meta: bool = True, difficulty: str = "medium", split: str = "test") -> str:
    """metatokens_list_recall_96; other variants say what differs: _hard, _nometa, _dev."""
    name = f"{TAG}_{task}_{length}"
    if difficulty != "medium":
        name += "_" + difficulty.replace("-", "_")
    if not meta:
        name += "_nometa"
    return name if split == "test" else f"{name}_{split}"


def marked_prompt(example: Example, tokenizer: MetaTokenizer) -> str:
    """The prompt's text with META_TOKEN at each meta-token's place (the text between them decoded piece
    by piece, so it is the task's own text: checked against ``example.prompt_text``)."""
    cuts = [*example.meta_positions, len(example.prompt_ids)]
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(tokenizer.decode(example.prompt_ids[start:cut]))
        start = cut + 1
    if "".join(pieces) != example.prompt_text:
        raise EvaluationError("a prompt's tokens do not decode to its text; this tokenizer cannot write the task pack")
    return META_TOKEN.join(pieces)


def harness_tokenizer(tokenizer: MetaTokenizer) -> Tokenizer:
    """The tokenizer as transformers builds it from tokenizer.json: special tokens written in the text
    become their ids (MetaTokenizer refuses that on purpose; a prompt for the harness needs it)."""
    return Tokenizer.from_str(tokenizer.to_json_str())


def _task_names(task: str) -> tuple[list[str], bool]:
    """The tasks --task names (comma-separated, or all), and whether it was all."""
    if task == "all":
        return list(TASKS), True
    names = [get_task(part.strip()).name for part in task.split(",") if part.strip()]
    if not names:
        raise EvaluationError("--task is empty; name tasks (comma-separated) or all")
    return list(dict.fromkeys(names)), False


def _model_window(model_dir: Path) -> int | None:
    """The longest input the harness will allow the model (its config's first window field), when it has one."""
    config = read_json_object(model_dir / "config.json", EvaluationError, missing="not a model folder",
                              damaged="the folder is damaged")
    for name in WINDOW_FIELDS:
        if isinstance(config.get(name), int):
            return config[name]
    return None


def _task_yaml(name: str, task: str, data: Path, max_gen_toks: int, metadata: dict[str, Any]) -> str:
    config = {
        "task": name,
        "tag": [TAG, f"{TAG}_{task}"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [EOS_TOKEN], "do_sample": False, "max_gen_toks": max_gen_toks},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, **metadata},
    }
    head = (f"# {get_task(task).name} at {metadata['length']} tokens, written by `metatokens tasks lm-eval` "
            f"(metatokens {__version__}); see README.md\n")
    return head + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000)


def _check_prompts(examples: Sequence[Example], rows: Sequence[dict[str, str]], encoder: Tokenizer) -> None:
    for example, row in zip(examples, rows):
        if encoder.encode(row["prompt"], add_special_tokens=False).ids != list(example.prompt_ids):
            raise EvaluationError(f"the prompt text {row['prompt'][:60]!r}... does not tokenize back to its ids; "
                                  "this tokenizer cannot write the task pack")


def _is_pack(folder: Path) -> bool:
    """An earlier pack: its marker lists every file and folder in it."""
    return is_marked_output(folder, PACK_MARKER, PACK_FORMAT)


@holds_output(EvaluationError)  # two writers of one folder at once: the second is refused
def write_lm_eval_pack(
    checkpoint: str | Path,
    out: str | Path,
    *,
    task: str = "all",
    lengths: Sequence[int],
    n: int = 100,
    seed: int = 0,
    difficulty: str = "medium",
    split: str = "test",
    meta: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the task folder (module docstring) and return what its marker records.

    ``task`` is a task name, several comma-separated, or all; with all, a length a task cannot fit
    (Segment Counting below about 100 tokens) is left out and listed under "skipped". An existing
    ``out`` must be empty, or an earlier pack, replaced only with overwrite=True.
    """
    names, every = _task_names(task)
    for name in names:
        get_task(name).level(difficulty)  # an unknown difficulty is bad input, not a length a task cannot fit
    lengths = sorted({int(length) for length in lengths})
    if not lengths or lengths[0] < 8:
        raise EvaluationError(f"lengths must be integers >= 8, got {lengths}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise EvaluationError(f"n must be a positive integer, got {n!r}")
    if split not in EVAL_SPLITS:
        raise EvaluationError(f"split must be test or dev, got {split!r} (train prompts are what fine-tuning learns from)")
    out = Path(out)
    _check_out_dir(out, command="tasks lm-eval", overwrite=overwrite, sources=[Path(checkpoint)], ours=_is_pack)
    loaded = load_model(checkpoint)
    with_meta = uses_meta(loaded, meta)
    tokenizer = loaded.tokenizer
    encoder = harness_tokenizer(tokenizer)
    model_dir = resolve_model_dir(checkpoint)
    settings = {"checkpoint": str(checkpoint), "tokenizer_sha256": tokenizer_hash(tokenizer), "meta": with_meta,
                "difficulty": difficulty, "split": split, "seed": seed, "n": n}

    entries, skipped, files = [], [], {}
    for name in names:
        for length in lengths:
            try:
                examples = make_examples(name, tokenizer, length=length, difficulty=difficulty, n=n, seed=seed,
                                         split=split, meta=with_meta)
            except TaskError as err:
                if not every:
                    raise EvaluationError(f"{loaded.name}: {err}") from None
                skipped.append({"task": name, "length": length, "why": str(err)})
                continue
            rows = [{"prompt": marked_prompt(e, tokenizer), "answer": e.answer_text} for e in examples]
            _check_prompts(examples, rows, encoder)
            max_gen_toks = max(len(e.answer_ids) for e in examples)  # the answer and its EOS
            positions = max(len(e.prompt_ids) for e in examples) + max_gen_toks
            if loaded.max_positions is not None and positions - 1 > loaded.max_positions:
                raise EvaluationError(f"{loaded.name} ({loaded.max_positions} learned positions) cannot read length "
                                      f"{length}: its prompts and answers need up to {positions - 1} positions; drop that length")
            label = pack_task_name(name, length, meta=with_meta, difficulty=difficulty, split=split)
            data = f"data/{label}.jsonl"
            entry = {"name": label, "task": name, "length": length, "n": len(rows), "max_gen_toks": max_gen_toks,
                     "positions": positions, "prompts_sha256": prompts_digest(examples), "data": data}
            metadata = {k: entry[k] for k in ("task", "length", "prompts_sha256")} | settings
            files[data] = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            files[f"{label}.yaml"] = _task_yaml(label, name, out.resolve() / data, max_gen_toks, metadata)
            entries.append(entry)
    if not entries:
        raise EvaluationError("no task fits these lengths: " + "; ".join(s["why"] for s in skipped))

    window = _model_window(model_dir)
    needed = max(e["positions"] for e in entries)
    marker = {"format": PACK_FORMAT, "metatokens_version": __version__, **settings,
              "hf_folder": _is_hf_folder(model_dir), "remote_code": _needs_remote_code(model_dir),
              "model_window": window, "max_length": needed if window is not None and needed > window else None,
              "tasks": entries, "skipped": skipped}
    files["README.md"] = pack_readme(marker, out)
    marker["files"] = ["data", *sorted(files), PACK_MARKER]
    with atomic_folder(out) as tmp:
        (tmp / "data").mkdir()
        for rel, text in files.items():
            (tmp / rel).write_text(text, encoding="utf-8")
        (tmp / PACK_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return marker


def _config_type(model_dir: Path) -> str | None:
    config = read_json_object(model_dir / "config.json", EvaluationError, missing="not a model folder",
                              damaged="the folder is damaged")
    return config.get("model_type") if config.get("format") != "metatokens" else None


def _is_hf_folder(model_dir: Path) -> bool:
    """A folder transformers loads: an export or a Hugging Face model (not a metatokens model folder)."""
    return _config_type(model_dir) is not None


def _needs_remote_code(model_dir: Path) -> bool:
    return _config_type(model_dir) == EXPORT_MODEL_TYPE


def lm_eval_command(marker: dict[str, Any], out: str | Path, output_path: str | Path | None = None) -> str:
    """The harness's command line for a pack written from a transformers folder."""
    args = [f"pretrained={marker['checkpoint']}"]
    if marker["remote_code"]:
        args.append("trust_remote_code=True")
    if marker["max_length"] is not None:
        args.append(f"max_length={marker['max_length']}")
    output = output_path or f"{Path(out)}-results"
    return (f"lm_eval --model hf --model_args {','.join(args)} --include_path {out} --tasks {TAG} "
            f"--batch_size 1 --log_samples --output_path {output}")


def pack_readme(marker: dict[str, Any], out: str | Path) -> str:
    rows = "\n".join(f"| `{e['name']}` | {e['task']} | {e['length']} | {e['n']} | {e['max_gen_toks']} | "
                     f"`{e['prompts_sha256']}` |" for e in marker["tasks"])
    variant = "with `<|meta|>` where each meta-token belongs" if marker["meta"] else "without meta-tokens"
    lines = [
        "# metatokens tasks for lm-evaluation-harness", "",
        (f"Written by `metatokens tasks lm-eval` (metatokens {marker['metatokens_version']}) from "
         f"`{marker['checkpoint']}`: the {marker['split']} prompts `metatokens evaluate` scores for that model "
         f"({marker['difficulty']}, seed {marker['seed']}), {variant}. Each task generates greedily until EOS "
         "and scores exact match of the generated text against the answer."), "",
        "| lm-eval task | task | length | prompts | max_gen_toks | prompts_sha256 (as in `metatokens evaluate`) |",
        "|---|---|---|---|---|---|", rows, "",
    ]
    if marker["skipped"]:
        lines += ["Left out: " + "; ".join(f"{s['task']} at {s['length']}" for s in marker["skipped"]) + ".", ""]
    if marker["hf_folder"]:
        lines += ["Run (batch size 1: exported metatokens models refuse padded batches):", "", "```bash",
                  lm_eval_command(marker, out), "```", ""]
    else:
        lines += [("The harness loads Hugging Face folders: `metatokens export` this model first, then run "
                   f"`lm_eval --model hf --model_args pretrained=EXPORT,trust_remote_code=True --include_path {out} "
                   f"--tasks {TAG}`."), ""]
    lines += ["The YAML files name their data by absolute path: move the folder and write it again.", ""]
    return "\n".join(lines)
