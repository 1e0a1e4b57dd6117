"""What the study compares: its models and controls, tasks, scales, and the paper's numbers.

One home for these constants, read by the pipeline (`metatokens.study.runner`) and the report
(`metatokens.study.report`); neither imports the other's internals.

The models. The paper compares three pre-trained models (GPT-2 with learned absolute positions and
no meta-tokens, Meta+APE, Meta+RoPE). Beside them the study runs controls, each isolating one
thing that the paper's comparison confounds:

* GPT-2 with RoPE and no meta-tokens: Meta+RoPE differs from the paper's baseline in its positions
  as well as in its meta-tokens; this baseline differs in the meta-tokens alone.
* GPT-2 with RoPE, widened to the meta model's parameter count: the meta-attention sublayers add
  about 23% parameters, so a plain model of the same size separates "more parameters" from
  "meta-attention".
* Meta+RoPE fine-tuned from scratch (no pre-training), with and without meta-tokens in its
  prompts: what the marker alone gives a fresh model, and (against the pre-trained Meta+RoPE) what
  pre-training with meta-tokens adds.
* Every meta model is also evaluated with its meta-tokens removed from the test prompts: does its
  accuracy depend on the marker at test time?
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("list_recall", "segment_counting", "parity", "copying")
TASK_LABELS = {"list_recall": "List Recall", "segment_counting": "Segment Counting", "parity": "Parity",
               "copying": "Copying"}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study."""

    label: str  # its name in the report
    preset: str  # the pre-training preset; for a model not pre-trained, the preset whose shape it takes
    meta: bool  # fine-tuned and evaluated on the meta-token variant of the prompts
    pretrained: bool = True  # False: fine-tuned from a random initialisation
    overrides: tuple[str, ...] = ()  # model.* settings changed from the preset
    role: str = "paper"  # "paper" (one of the paper's three models) or "control"
    isolates: str = ""  # for a control: what it separates


def tiny_models(presets: dict[str, str], wide: str) -> dict[str, ModelSpec]:
    """The paper's three models and the controls, on the given presets; `wide` is the model.n_embd
    that gives a plain RoPE model the meta model's parameter count at that shape."""
    return {
        "gpt2": ModelSpec("GPT-2 (APE, no meta)", presets["gpt2"], meta=False),
        "meta-ape": ModelSpec("Meta+APE", presets["meta-ape"], meta=True),
        "meta-rope": ModelSpec("Meta+RoPE", presets["meta-rope"], meta=True),
        "gpt2-rope": ModelSpec("GPT-2 (RoPE, no meta)", presets["gpt2"], meta=False,
                               overrides=("model.pos_encoding=rope",), role="control",
                               isolates="meta-tokens from the positional scheme (vs Meta+RoPE)"),
        "gpt2-rope-wide": ModelSpec("GPT-2 (RoPE, no meta, wide)", presets["gpt2"], meta=False,
                                    overrides=("model.pos_encoding=rope", f"model.n_embd={wide}"), role="control",
                                    isolates="meta-attention from its extra parameters (vs Meta+RoPE)"),
        "scratch-meta": ModelSpec("Meta+RoPE, not pre-trained", presets["meta-rope"], meta=True, pretrained=False,
                                  role="control", isolates="what pre-training adds (vs Meta+RoPE)"),
        "scratch-plain": ModelSpec("Meta+RoPE, not pre-trained, no meta prompts", presets["meta-rope"], meta=False,
                                   pretrained=False, role="control",
                                   isolates="what the marker alone gives a fresh model (vs the one above)"),
    }


PAPER_MODELS = ("gpt2", "meta-ape", "meta-rope")

# The paper's numbers (arXiv 2509.16278; docs/method.md section 6): fine-tuned at 512 and evaluated at 512 (Fig. 1);
# None where the paper gives no number.
PAPER_ACCURACY = {
    "list_recall": {"gpt2": 3.6, "meta-ape": 98.7, "meta-rope": 99.3, "gpt-neo": 49.2},
    "segment_counting": {"gpt2": None, "meta-ape": None, "meta-rope": None, "gpt-neo": None},
    "parity": {"gpt2": 60.0, "meta-ape": 100.0, "meta-rope": 100.0, "gpt-neo": 64.8},
    "copying": {"gpt2": 7.8, "meta-ape": 98.5, "meta-rope": 98.9, "gpt-neo": 16.9},
}
PAPER_LENGTH_GAIN = {"gpt2": 3.5, "meta-ape": 28.6, "meta-rope": 10.7}  # train 256 -> eval 512, points
PAPER_ENTROPY_DIFF, PAPER_LOGIT_BOOST = 1.40, 1.26  # docs/method.md section 7
PAPER_ABLATION = ("zeroing the meta positional encoding: +11 to +39 points on List Recall; zeroing the meta "
                  "embedding hurts badly")

# What the evaluate and ablate stages keep of each measurement. Exact match is the paper's metric; token
# accuracy and answer loss (nats per answer token) still separate models that are all at the exact-match floor.
EVAL_METRICS = ("exact_match", "token_accuracy", "answer_loss")
RESULT_FORMAT = 4  # part of the evaluation stages' cache keys: bump when their stage.json results change shape


@dataclass(frozen=True)
class Scale:
    """Sizes of one study."""

    models: dict[str, ModelSpec]
    pretrain_overrides: tuple[str, ...]  # applied to every pre-training run
    ft_len: int  # fine-tuning prompt length L (evaluated at L, 2L, and 4L with YaRN for RoPE); 2L plus the
    # answer must fit the pre-training window, so that APE models can be read at 2L too
    ft_steps: int  # one fine-tune per model, on the mixture of the four tasks
    ft_batch: int
    ft_lr: float
    eval_n: int  # test prompts per task and length
    analysis_n: int
    rd_epochs: int
    ft_weights: tuple[int, ...] = (1, 1, 1, 1)  # the mixture's share of each task, in `tasks` order
    ft_min_lr_ratio: float = 0.1  # cosine decay to this fraction of ft_lr
    ft_warmup: int = 100
    ft_curve_points: int = 8  # held-out evaluations during fine-tuning (the learning curves)
    ft_curve_n: int = 64  # held-out prompts per task at each of them
    difficulty: str = "medium"
    budget: str = ""  # what the scale is meant to take, for the report
    smoke_test: bool = False  # its numbers carry no evidence (too small or too short to learn the tasks)
    notes: tuple[str, ...] = field(default=())
    tasks: tuple[str, ...] = TASKS  # fine-tuned and tested, in TASKS order; a subset only with tasks_note
    tasks_note: str = ""  # why this scale leaves tasks out (said in the report)

    def __post_init__(self) -> None:
        if not self.tasks or list(self.tasks) != [t for t in TASKS if t in self.tasks]:  # unknown, repeated, reordered
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, in that order, got {self.tasks}")
        if len(self.ft_weights) != len(self.tasks):
            raise ValueError(f"{len(self.ft_weights)} ft_weights for {len(self.tasks)} tasks")
        if len(self.tasks) < len(TASKS) and not self.tasks_note:
            raise ValueError("a scale that leaves tasks out says why (tasks_note)")


TINY_PRESETS = {"gpt2": "tiny-baseline", "meta-ape": "tiny-ape", "meta-rope": "tiny"}
TINY_MODELS = tiny_models(TINY_PRESETS, wide=144)

SCALES: dict[str, Scale] = {
    # only for tests: seconds
    "toy": Scale(tiny_models(TINY_PRESETS, wide=36),
                 ("model.base=toy", "model.block_size=256", "data.vocab_size=1024", "data.max_documents=120",
                  "train.max_steps=6", "train.batch_size=4", "train.eval_interval=0", "train.eval_batches=2",
                  "train.ckpt_interval=0"),
                 ft_len=120, ft_steps=4, ft_batch=4, ft_lr=1e-3, eval_n=4, analysis_n=4, rd_epochs=1, ft_warmup=1,
                 ft_curve_points=2, ft_curve_n=2, budget="under a minute", smoke_test=True),
    "demo": Scale(tiny_models(TINY_PRESETS, wide=144),
                  ("model.block_size=256", "model.n_layer=2", "train.max_steps=80", "train.eval_interval=0",
                   "train.ckpt_interval=40"),
                  ft_len=120, ft_steps=40, ft_batch=8, ft_lr=1e-3, eval_n=24, analysis_n=16, rd_epochs=3, ft_warmup=5,
                  ft_curve_points=2, ft_curve_n=16, budget="3-5 minutes on 2 CPU cores", smoke_test=True),
    # docs/study.md, "The tiny recipe": L = 96 because Copying learns there in a third of the steps it needs at
    # 120, and List Recall gets ~3,400 steps of its own, what its jump needed in the probe. At lr 2e-3 the jump
    # came in 5 of the 9 meta fine-tunes of 3 seeds (docs/results/reproduce_tiny_2026-12-06/); lr 3e-3 since
    # 2026-12-06 (docs/results/lr_probe/: the jump in 4 of 5 fine-tunes, 2 of the same 5 at 2e-3).
    "tiny": Scale(TINY_MODELS, ("train.max_steps=500", "train.eval_interval=250", "train.ckpt_interval=250"),
                  ft_len=96, ft_steps=4500, ft_batch=16, ft_lr=3e-3, eval_n=100, analysis_n=50, rd_epochs=5,
                  tasks=("list_recall", "parity", "copying"), ft_weights=(10, 1, 2), ft_warmup=100,
                  ft_curve_points=10, ft_curve_n=64, budget="under 60 minutes per seed on 2 CPU cores",
                  tasks_note="its medium prompts need about 107 tokens with this tokenizer, more than L = 96 holds, "
                             "and the paper gives no number for it, so no claim is lost."),
    "small": Scale(tiny_models(TINY_PRESETS, wide=432),
                   ("model.base=small", "data.vocab_size=8192", "train.max_steps=5000", "train.batch_size=32",
                    "train.eval_interval=500", "train.ckpt_interval=1000"),
                   ft_len=240, ft_steps=6000, ft_batch=32, ft_lr=5e-4, eval_n=500, analysis_n=50, rd_epochs=5,
                   ft_weights=(3, 1, 1, 3), budget="hours on one GPU"),
    "paper": Scale(tiny_models({"gpt2": "gpt2-small", "meta-ape": "gpt2-small-meta-ape",
                                "meta-rope": "gpt2-small-meta"}, wide=864), (),
                   ft_len=480, ft_steps=20000, ft_batch=16, ft_lr=1e-4, eval_n=1000, analysis_n=50, rd_epochs=5,
                   ft_warmup=500, budget="days on 4 A100s (the paper's section 4 set-up)"),
}
