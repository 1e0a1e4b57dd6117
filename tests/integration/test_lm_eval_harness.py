"""lm-evaluation-harness (`pip install metatokens[eval]`) scores `metatokens tasks lm-eval` folders offline
on CPU, and its exact match is `metatokens evaluate`'s, prompt by prompt: for an exported meta-token
model (through its remote code) and for a plain GPT-2 Hugging Face model (no meta-tokens).

Both models are rigged: every sublayer's output is zero, so the model is a bigram table, and its
untied head sends the last prompt token (":" of "Answer:") to a Parity answer. The exported model
then writes EOS, so it is right on the prompts with that answer and wrong on the others; the GPT-2
model goes on writing, so it is right on none: a pack that gave credit for an answer not followed by
EOS (too few new tokens, another stop string) or spelled an answer otherwise would disagree with
evaluate on some prompt."""

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import export_model, hf_bpe, quiet_main, subprocess_env

from metatokens.model import GPT
from metatokens.model.config import ModelConfig
from metatokens.tasks import make_examples
from metatokens.tokenizer import EOS_TOKEN, MetaTokenizer

LENGTHS = "64,96"
TASKS = ("parity", "list_recall")
N = 8
LM_EVAL = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or shutil.which("lm_eval")


def task_texts() -> list[str]:
    tok = MetaTokenizer.train(["ab"], 258)  # bytes only: the prompt texts do not depend on it
    return [e.prompt_text + e.answer_text for task in TASKS for e in make_examples(task, tok, length=400, n=40, seed=0)]


def answer_chain(tokenizer, *, stops: bool) -> list[int]:
    """The last prompt token, then a Parity answer's ids: what the rigged model writes. With stops, EOS
    ends it; without, the answer leads back to the last prompt token, and the model never stops."""
    examples = make_examples("parity", tokenizer, length=64, n=N, seed=0, split="test", meta=False)
    assert len({e.prompt_ids[-1] for e in examples}) == 1
    last, answer = examples[0].prompt_ids[-1], examples[0].answer_ids
    chain = [last, *answer] if stops else [last, *answer[:-1], last]
    assert len(set(chain[:-1])) == len(chain) - 1
    return chain


def rig_bigram(head: torch.Tensor, hidden: torch.Tensor, chain: list[int]) -> None:
    """Head rows so that the state of token a scores b highest, for each neighbour pair (a, b) in chain."""
    head.zero_()
    for a, b in itertools.pairwise(chain):
        head[b] += 5 * hidden[a] / hidden[a].norm()


@pytest.fixture(scope="module")
def rigged_export(tmp_path_factory) -> Path:
    tok = MetaTokenizer.train(task_texts(), 600)
    cfg = ModelConfig(vocab_size=640, block_size=256, n_layer=2, n_head=2, n_embd=32, meta_token_id=tok.meta_token_id,
                      pos_encoding="rope", tie_embeddings=False)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "c_proj" in name:  # attention, meta-attention and MLP outputs
                p.zero_()
        hidden = F.layer_norm(model.wte.weight, (cfg.n_embd,), model.ln_f.weight, model.ln_f.bias)
        rig_bigram(model.lm_head.weight, hidden, answer_chain(tok, stops=True))
    return export_model(model, tok, tmp_path_factory.mktemp("rigged"), "hf")


@pytest.fixture(scope="module")
def rigged_gpt2(tmp_path_factory) -> Path:
    """A GPT-2 Hugging Face folder (GPT2LMHeadModel, untied head) with a GPT-2-style BPE of task text, that
    writes a Parity answer and never stops."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2")
    bpe = hf_bpe(EOS_TOKEN, task_texts(), 600)
    bpe.save(str(folder / "tokenizer.json"))
    bpe.save_model(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS_TOKEN}), encoding="utf-8")
    eos = bpe.token_to_id(EOS_TOKEN)
    cfg = GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=256, n_embd=32, n_layer=2, n_head=4,
                     tie_word_embeddings=False, eos_token_id=eos, bos_token_id=eos)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "c_proj" in name or "wpe" in name:
                p.zero_()
        hidden = model.transformer.ln_f(model.transformer.wte.weight)
        rig_bigram(model.lm_head.weight, hidden, answer_chain(MetaTokenizer.from_gpt2(folder), stops=False))
    model.save_pretrained(folder)
    return folder


def run_lm_eval(model_args: str, pack: Path, out: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`lm_eval --model hf ...` offline on CPU, as docs/lm-eval.md runs it; it must not ask anything."""
    assert LM_EVAL, "lm_eval is missing: pip install -e '.[eval]' (the Makefile's venv installs it)"
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run([LM_EVAL, "--model", "hf", "--model_args", model_args, "--include_path", str(pack),
                           "--tasks", "metatokens", "--device", "cpu", "--batch_size", "1", "--log_samples",
                           "--output_path", str(out)], check=False, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def compare(checkpoint: Path, model_args: str, tmp_path: Path, suffix: str = "") -> list[tuple[int, str, str]]:
    """Write the pack, run the harness and metatokens evaluate; assert agreement prompt by prompt and
    return every prompt's (exact match, harness response, answer)."""
    pack = tmp_path / "pack"
    quiet_main(["tasks", "lm-eval", "--checkpoint", str(checkpoint), "--out", str(pack), "--task", ",".join(TASKS),
                "--lengths", LENGTHS, "--n", str(N)])
    proc = run_lm_eval(model_args, pack, tmp_path / "results", tmp_path)
    said = proc.stdout + proc.stderr
    assert "custom code" not in said and "You are using a model of type" not in said
    everything = []
    for task in TASKS:
        quiet_main(["evaluate", "--checkpoint", str(checkpoint), "--task", task, "--lengths", LENGTHS, "--n", str(N),
                    "--out", str(tmp_path / task), "--no-progress"])
        for row in json.loads((tmp_path / task / f"{task}.json").read_text())["models"][0]["results"]:
            name = f"metatokens_{task}_{row['length']}{suffix}"
            [file] = (tmp_path / "results").rglob(f"samples_{name}_*.jsonl")
            samples = sorted((json.loads(line) for line in file.read_text().splitlines()), key=lambda s: s["doc_id"])
            docs = [json.loads(line) for line in (pack / "data" / f"{name}.jsonl").read_text().splitlines()]
            assert [s["arguments"]["gen_args_0"]["arg_0"] for s in samples] == [d["prompt"] for d in docs]
            assert [s["target"] for s in samples] == [d["answer"] for d in docs]
            assert [int(s["exact_match"]) for s in samples] == row["exact_per_example"], name
            everything += [(int(s["exact_match"]), s["resps"][0][0], s["target"]) for s in samples]
    return everything


def test_lm_eval_exact_match_equals_evaluates_prompt_by_prompt_for_an_export(rigged_export, tmp_path):
    scores = [exact for exact, _, _ in compare(rigged_export, f"pretrained={rigged_export},trust_remote_code=True",
                                               tmp_path)]
    assert 0 < sum(scores) < len(scores)  # right on some prompts, wrong on others


def test_a_plain_gpt2_model_scores_the_pack_and_an_answer_it_does_not_end_counts_in_neither(rigged_gpt2, tmp_path):
    found = compare(rigged_gpt2, f"pretrained={rigged_gpt2}", tmp_path, suffix="_nometa")
    assert all(exact == 0 for exact, _, _ in found)
    unended = [(said, answer) for _, said, answer in found if said.startswith(answer)]
    assert unended and all(len(said) > len(answer) for said, answer in unended)  # the answer, and more
