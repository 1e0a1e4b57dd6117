"""What both test layers share: tests/unit (fast, in one process) and tests/integration (training
runs, subprocesses, the toy study).

Helpers are plain functions and constants, imported with `from conftest import ...` (pytest's
default "prepend" import mode puts this folder, tests/, on sys.path; there is no __init__.py, so
test file names are unique across the layers). Fixtures are found by name. The expensive ones are
session-scoped and made once per run: they are read-only to the tests (a test that damages a toy run
works on its own copy of it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
from pathlib import Path

import pytest
import torch

from metatokens.model.config import model_shape
from metatokens.model import GPT

REPO = Path(__file__).resolve().parents[1]
META = 7  # meta-token id used by the toy models in these tests


# ----------------------------------------------------------------------------- tiny random models


def toy_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = model_shape("toy", **{"meta_token_id": META, "vocab_size": 97, **overrides})
    return GPT(cfg).eval()


def meta_favourite_model() -> GPT:
    """A toy model rigged so that the meta-token is the argmax at every position: every hidden state
    becomes the final LayerNorm's bias b, and the meta row of the tied embedding scores highest on b."""
    model = toy_model(pos_encoding="none")
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(torch.randn(model.config.n_embd))
        model.wte.weight[META] = 10 * model.ln_f.bias
    return model


def mixed_batch(T: int = 24, seed: int = 0) -> torch.Tensor:
    """Rows with no meta-token, one, many, and only meta-tokens (the cases that break masks)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(8, 97, (5, T), generator=g)
    idx[1, T // 2] = META  # one
    idx[2, torch.randperm(T, generator=g)[: T // 3]] = META  # many
    idx[3, :] = META  # only meta
    idx[4, 0] = META  # the first position only
    return idx


def small_model(tokenizer, seed: int = 0, **overrides) -> GPT:
    """A toy model whose meta id is `tokenizer`'s (vocabulary 320, above small_tokenizer's 300 ids)."""
    return toy_model(seed, vocab_size=320, meta_token_id=tokenizer.meta_token_id, **overrides)


TASK_VOCAB = 640  # embedding rows of task_model (>= task_tokenizer's 600 ids)


def task_model(tokenizer, seed: int = 0, **overrides) -> GPT:
    """A 2-layer RoPE model for task_tokenizer's ids (vocabulary TASK_VOCAB, window 64)."""
    from metatokens.model.config import ModelConfig

    torch.manual_seed(seed)
    cfg = dict(vocab_size=TASK_VOCAB, block_size=64, n_layer=2, n_head=2, n_embd=32,
               meta_token_id=tokenizer.meta_token_id, pos_encoding="rope")
    return GPT(ModelConfig(**{**cfg, **overrides})).eval()


# Tiny tensors gain nothing from a second thread, and on a shared 2-core machine the spin-waiting
# of torch's thread pool slows tests several-fold (and the subprocess tests compete for cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


# ----------------------------------------------------------------------------- tiny tokenizers

SMALL_TEXT = ["the meta token marks a place in the text. " * 5, "Numbers 123 456 and words; more words here."] * 20

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She bought bread, apples and a bottle of milk at the market this morning.",
    "How many times did the old sailor count the stars before he fell asleep?",
    "Read the letter twice, then write your answer in the space below.",
    "A small garden with roses and a wooden gate stood behind the house.",
    "Question and answer sessions were held in the library every evening.",
    "The children listed their favourite animals: horse, tiger, rabbit and owl.",
    "Copy the first word of each line into the notebook on the table.",
]


@pytest.fixture(scope="session")
def small_tokenizer():
    """A 300-id byte-level BPE of two repeated sentences: for model folders and generation."""
    from metatokens.tokenizer import MetaTokenizer

    return MetaTokenizer.train(SMALL_TEXT, vocab_size=300)


@pytest.fixture(scope="session")
def sentence_tokenizer():
    """A 512-token byte-level BPE trained on English sentences made up here (the task generators'
    tests: 2-3 tokens a word)."""
    from metatokens.tokenizer import MetaTokenizer

    rng = random.Random(0)
    texts = []
    for _ in range(600):
        words = " ".join(rng.choice(SENTENCES).split()[: rng.randint(4, 14)])
        texts.append(words + f" {rng.randint(0, 99)} {rng.choice('01')} {rng.choice('01')}\n")
    return MetaTokenizer.train(texts, 512)


@pytest.fixture(scope="session")
def task_tokenizer(tmp_path_factory):
    """A BPE fitted to List Recall text, so prompts of 64 tokens already hold a few lists; saved, its
    file in `.path` (for --tokenizer)."""
    from metatokens.tasks import make_examples
    from metatokens.tokenizer import MetaTokenizer

    bytes_only = MetaTokenizer.train(["ab"], 258)
    texts = [e.prompt_text + e.answer_text for e in make_examples("list_recall", bytes_only, length=600, n=60, seed=0)]
    tokenizer = MetaTokenizer.train(texts, 600)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(path)
    tokenizer.path = path
    return tokenizer


# ----------------------------------------------------------------------------- the command line, subprocesses, figures


def run_cli(*args) -> tuple[int, str]:
    """`metatokens ARGS` in this process: (exit code, what it wrote to stderr)."""
    from metatokens import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, err.getvalue()


def quiet_main(argv: list[str]) -> int:
    """`metatokens ARGV` in this process with its output swallowed; it must succeed."""
    from metatokens import cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli.main(argv)
    assert code == 0, err.getvalue()
    return code


def subprocess_env() -> dict[str, str]:
    """The environment for `python -m metatokens` subprocesses: this tree's sources first, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def snapshot(*folders: Path) -> dict[str, str | None]:
    """Every file (its SHA-256) and folder under `folders`, hidden ones included: what "nothing was
    changed" means in the tests of refusals."""
    found: dict[str, str | None] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return found


def capture_figures(monkeypatch, module) -> list:
    """The matplotlib Figures `module` would write, kept open for inspection instead of saved."""
    figures = []
    monkeypatch.setattr(module, "save_figure", lambda fig, path, **kw: figures.append(fig))
    return figures


# ----------------------------------------------------------------------------- toy corpora and toy runs

WORDS = ("meta token model text attention layer memory window list item count parity copy span the a of "
         "and to in is that for it as with was on be by this are from or at an which").split()
TOY_RUN_STEPS = 6  # the step of toy_runs' pre-training run


def write_words_corpus(folder: Path, n_docs: int = 30) -> Path:
    """`n_docs` documents of 60 random sentences; `random.Random(0)` draws the same words everywhere
    (the first 20 of 30 documents are the 20-document corpus)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
                     for _ in range(60)]
        (folder / f"doc{i:02d}.txt").write_text(" ".join(sentences), encoding="utf-8")
    return folder


def toy_data_overrides(corpus: Path, cache: Path) -> list[str]:
    """The `toy` preset's settings for a words corpus: vocabulary 300, 10% validation, a loss every step."""
    return [f"data.source={corpus}", f"data.cache_dir={cache}", "data.vocab_size=300", "data.max_documents=null",
            "data.val_fraction=0.1", "train.log_interval=1", "train.eval_interval=0", "train.eval_batches=2",
            "train.batch_size=4"]


def set_args(overrides: list[str]) -> list[str]:
    """["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]."""
    return [arg for s in overrides for arg in ("--set", s)]


def toy_data_args(root: Path) -> list[str]:
    """The --set arguments of toy_data_overrides for root/corpus and root/cache (a toy_runs folder)."""
    return set_args(toy_data_overrides(root / "corpus", root / "cache"))


def toy_run_config(corpus: Path, cache: Path, *extra: str):
    """The RunConfig of a toy pre-training on `corpus` (toy_data_overrides, then `extra`)."""
    from metatokens.training.config import load_run_config

    return load_run_config("toy", [*toy_data_overrides(corpus, cache), *extra])


def train_losses(run: Path) -> dict[int, float]:
    """step -> train_loss from a run folder's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


@pytest.fixture(scope="session")
def words_corpus(tmp_path_factory) -> Path:
    """A 30-document words corpus (write_words_corpus); tests only read it."""
    return write_words_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def toy_runs(tmp_path_factory) -> Path:
    """A folder with corpus/ (20 words documents), cache/, run/ (a toy pre-training at step
    TOY_RUN_STEPS) and ft/ (a toy fine-tuning at step 4). Made once; tests copy what they change."""
    root = tmp_path_factory.mktemp("toy-runs")
    write_words_corpus(root / "corpus", n_docs=20)
    quiet_main(["pretrain", "--config", "toy", "--out", str(root / "run"), "--no-progress", *toy_data_args(root),
                "--set", f"train.max_steps={TOY_RUN_STEPS}"])
    quiet_main(["finetune", "--from-scratch", "toy", "--tokenizer", str(root / "run" / "tokenizer.json"),
                "--set", "model.block_size=256", "--max-len", "160", "--steps", "4", "--batch-size", "4",
                "--eval-n", "4", "--set", "train.warmup_steps=1", "--out", str(root / "ft"), "--no-progress"])
    return root


# ----------------------------------------------------------------------------- Hugging Face: export (tiny random models)

HF_TEXTS = [
    "the quick brown fox jumps over the lazy dog. " * 3,
    "hello world, hello meta tokens! numbers 12 345 and symbols #$%",
    "a b c d e f g h i j k\nnew lines\ttabs  double  spaces",
] * 10


@pytest.fixture(scope="session")
def hf_meta_run(tmp_path_factory):
    """(folder, model, tokenizer): a random meta-token model (vocab padded beyond the tokenizer) saved
    as a metatokens folder."""
    from metatokens.runs.model_folder import save_pretrained
    from metatokens.tokenizer import MetaTokenizer

    tok = MetaTokenizer.train(HF_TEXTS, 300)
    torch.manual_seed(0)
    cfg = model_shape("toy", vocab_size=320, meta_token_id=tok.meta_token_id)
    model = GPT(cfg).eval()
    with torch.no_grad():  # larger projections, so that greedy decoding does not repeat one token
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.startswith(("wte", "lm_head")):
                p.mul_(5)
    folder = tmp_path_factory.mktemp("meta") / "run"
    save_pretrained(folder, model, tok)
    return folder, model, tok


@pytest.fixture(scope="session")
def hf_export(hf_meta_run, tmp_path_factory) -> Path:
    """hf_meta_run's folder exported for transformers (`metatokens export`)."""
    from metatokens.hf.export import export_hf

    folder, _, _ = hf_meta_run
    return export_hf(folder, tmp_path_factory.mktemp("export") / "hf")


def load_hf(folder, **kw):
    """An exported folder loaded with transformers' AutoModelForCausalLM, never stopping at EOS."""
    import metatokens.model.hf_model  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, **kw).eval()
    model.generation_config.eos_token_id = None  # ours never stops at EOS; compare fixed lengths
    return model


def hf_prompts(tok, with_meta: bool) -> torch.Tensor:
    """Two 8-token prompts (one the other reversed), with three meta-tokens if `with_meta`."""
    ids = tok.encode("the quick brown fox jumps over")[:8]
    rows = torch.tensor([ids, list(reversed(ids))])
    if with_meta:
        rows[0, 2] = rows[0, 5] = rows[1, 0] = tok.meta_token_id
    return rows


# ----------------------------------------------------------------------------- Hugging Face: import-hf (tiny random checkpoints)

HF_FAMILIES = ["llama", "qwen2", "neox", "gpt2"]


def hf_checkpoint(family: str, vocab: int):
    """(model, eos spelling) of a tiny random checkpoint; each family exercises its own corner."""
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig,
                              LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    from metatokens.tokenizer import EOS_TOKEN

    if family == "llama":  # GQA, llama3 rope scaling, untied head, padded vocab, eos spelled </s>
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
        cfg = LlamaConfig(vocab_size=vocab + 20, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope, eos_token_id=0,
                          bos_token_id=0, max_position_embeddings=128)
        return LlamaForCausalLM(cfg), "</s>"
    if family == "qwen2":  # one key/value head, biased q/k/v, tied embeddings
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, eos_token_id=0,
                          bos_token_id=0, max_position_embeddings=128)
        return Qwen2ForCausalLM(cfg), EOS_TOKEN
    if family == "neox":  # partial rotary (half of each head), parallel residual, untied, padded vocab
        cfg = GPTNeoXConfig(vocab_size=vocab + 20, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, rotary_pct=0.5, eos_token_id=0, bos_token_id=0,
                            max_position_embeddings=128)
        return GPTNeoXForCausalLM(cfg), EOS_TOKEN
    cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=4, eos_token_id=0, bos_token_id=0)
    return GPT2LMHeadModel(cfg), EOS_TOKEN


def hf_bpe(eos: str, texts=HF_TEXTS, vocab_size: int = 300):
    """A GPT-2-style BPE (300 ids of HF_TEXTS by default) made with the tokenizers library alone, `eos` its special token."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[eos], show_progress=False)
    return tok


@pytest.fixture(scope="session")
def hf_sources(tmp_path_factory):
    """family -> (folder with config.json + model.safetensors + tokenizer files, the HF model). Read only:
    copy a folder before changing it."""
    found = {}
    for i, family in enumerate(HF_FAMILIES):
        folder = tmp_path_factory.mktemp(family)
        probe, eos = hf_checkpoint(family, 1)
        tok = hf_bpe(eos)
        torch.manual_seed(i)
        hf, _ = hf_checkpoint(family, tok.get_vocab_size())
        with torch.no_grad():  # non-trivial norms and biases, weights large enough to vary the outputs
            for name, p in hf.named_parameters():
                p.add_(0.2 * torch.randn_like(p)) if p.dim() == 1 else p.mul_(3)
        hf.eval().save_pretrained(folder)
        tok.save(str(folder / "tokenizer.json"))
        tok.save_model(str(folder))  # vocab.json + merges.txt too: import-gpt2 reads GPT-2's own files
        (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}), encoding="utf-8")
        found[family] = folder, hf
    return found


@pytest.fixture(scope="session")
def hf_imported(hf_sources, tmp_path_factory):
    """family -> an import-hf model folder of that family's checkpoint (through the CLI)."""
    from metatokens import cli

    runs = {}
    for family, (folder, _) in hf_sources.items():
        run = tmp_path_factory.mktemp(f"{family}-run") / "run"
        assert cli.main(["import-hf", "--from", str(folder), "--out", str(run), "--block-size", "64"]) == 0
        runs[family] = run
    return runs


def add_meta_tokens(ids: torch.Tensor, meta: int) -> torch.Tensor:
    """Rows with different numbers of meta-tokens (3 and 5), one at position 0 of row 1."""
    out = ids.clone()
    out[0, [3, 9, 16]] = meta
    out[1, [0, 4, 5, 12, 20]] = meta
    return out


def randomise_meta_attention(model, seed=0):
    """Non-zero output projections: the sublayers then change the logits (as after training)."""
    from metatokens.model.family import FamilyModel

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.h:
            out = block.meta_attn.o_proj if isinstance(model, FamilyModel) else block.meta_attn.c_proj
            out.weight.copy_(torch.randn(out.weight.shape, generator=g) * 0.3)
    return model


def export_model(model, tok, tmp_path: Path, name: str) -> Path:
    """`model` saved as a metatokens folder, then `metatokens export`ed to tmp_path/name."""
    from metatokens import cli
    from metatokens.runs.model_folder import save_pretrained

    folder = save_pretrained(tmp_path / f"{name}-model", model, tok)
    assert cli.main(["export", "--checkpoint", str(folder), "--out", str(tmp_path / name)]) == 0
    return tmp_path / name
