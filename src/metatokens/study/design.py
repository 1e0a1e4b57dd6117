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
* Meta+RoPE pre-trained with k = 0 (no meta-tokens in pre-training), then fine-tuned and tested with
  meta-tokens exactly like Meta+RoPE: the attribution control. Against Meta+RoPE it measures what
  pre-training *with* meta-tokens adds, which is the paper's claim (the fresh model above also
  lacks all pre-training).
* Every meta model is also evaluated with its meta-tokens removed from the test prompts: does its
  accuracy depend on the marker at test time?

The recipe and the claims. Each model's fine-tuning learning rate is chosen on *dev* prompts
(`metatokens reproduce --tune`: every model of the paper's comparison, and GPT-2 with RoPE, gets
the same grid; the controls take the rate of the model they are compared with), then frozen here
(`Scale.ft_lrs`). The confirmatory study's primary claims, their smallest effects of interest and
their correction are fixed here too (`PRIMARY_CLAIMS`, `SESOI`), before its seeds run; the report
prints them with their digest (`preregistration`) and marks every other row exploratory.
"""

from __future__ import annotations

import dataclasses
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
        "meta-rope-k0": ModelSpec("Meta+RoPE, pre-trained with k = 0", presets["meta-rope"], meta=True,
                                  overrides=("data.k=0",), role="control",
                                  isolates="what pre-training with meta-tokens adds (vs Meta+RoPE): the same "
                                           "architecture pre-trained without them, fine-tuned and tested with them"),
    }


# The learning-rate grid is run for these (the paper's three models and GPT-2 with RoPE); every other model
# takes the rate chosen for the model it is compared with (its architecture's twin).
TUNED_MODELS = ("gpt2", "meta-ape", "meta-rope", "gpt2-rope")
LR_FROM = {"gpt2-rope-wide": "gpt2-rope", "scratch-meta": "meta-rope", "scratch-plain": "meta-rope",
           "meta-rope-k0": "meta-rope"}


PAPER_MODELS = ("gpt2", "meta-ape", "meta-rope")

# The paper's numbers (arXiv 2509.16278; docs/method.md section 6): fine-tuned at 512 and evaluated at 512 (Fig. 1);
# None where the paper gives no number.
PAPER_ACCURACY = {
    "list_recall": {"gpt2": 3.6, "meta-ape": 98.7, "meta-rope": 99.3, "gpt-neo": 49.2},
    "segment_counting": {"gpt2": None, "meta-ape": None, "meta-rope": None, "gpt-neo": None},
    "parity": {"gpt2": 60.0, "meta-ape": 100.0, "meta-rope": 100.0, "gpt-neo": 64.8},
    "copying": {"gpt2": 7.8, "meta-ape": 98.5, "meta-rope": 98.9, "gpt-neo": 16.9},
}
# Fig. 3 of the paper, as docs/method.md section 6 reads it: List Recall fine-tuned at 256 and evaluated at 512, the
# figure's "gain" per model. The paper does not say what the gain is measured against (accuracy at 512 minus at 256,
# or over a model evaluated without the extension); the study quotes these numbers as the paper's and judges the
# claim as the figure shows it, by absolute accuracy beyond the fine-tuning length: meta minus baseline at 2L.
PAPER_LENGTH_GAIN = {"gpt2": 3.5, "meta-ape": 28.6, "meta-rope": 10.7}
PAPER_ENTROPY_DIFF, PAPER_LOGIT_BOOST = 1.40, 1.26  # docs/method.md section 7
PAPER_ABLATION = ("zeroing the meta positional encoding: +11 to +39 points on List Recall; zeroing the meta "
                  "embedding hurts badly")

# What the evaluate and ablate stages keep of each measurement. Exact match is the paper's metric; token
# accuracy and answer loss (nats per answer token) still separate models that are all at the exact-match floor.
EVAL_METRICS = ("exact_match", "token_accuracy", "answer_loss")
RESULT_FORMAT = 4  # part of the evaluation stages' cache keys: bump when their stage.json results change shape


@dataclass(frozen=True)
class YarnProtocol:
    """The paper's use of YaRN (its section 5): switch it on for a RoPE model with scale s, fine-tune inside the
    new window at a length past the pre-training window, and test up to twice that length."""

    scale: float  # s: the window grows from the pre-training block size to s times it
    length: int  # L_y: fine-tuning prompt length (past the pre-training window); tested at L_y and 2 L_y
    steps: int
    lr: float  # peak learning rate, cosine decay to a tenth; from the L fine-tune, as context extension does
    batch: int
    tasks: tuple[str, ...] = ("list_recall",)
    weights: tuple[int, ...] = (1,)
    warmup: int = 20
    models: tuple[str, ...] = ("meta-rope", "gpt2-rope")  # Meta+RoPE and GPT-2 (RoPE, no meta), same protocol


@dataclass(frozen=True)
class MemoryProtocol:
    """The measurement of what a meta-token caches (`metatokens reproduce --memory`, docs/memory.md): windowed
    self-attention (`model.attn_window`), so that past the window the only way back is through the meta-tokens.

    Each seed pre-trains and fine-tunes Meta+RoPE and GPT-2 (RoPE) exactly as the study does (the same stages,
    the same keys), then continues each fine-tune for `steps` on List Recall and Copying at L, in four arms:
    Meta+RoPE with full attention (a, `full`); Meta+RoPE with the window W (`meta`); GPT-2 (RoPE) with the
    window and no meta-tokens (b, `plain`); Meta+RoPE with the window, no meta-tokens in its prompts and the
    first `sinks` positions kept as StreamingLLM's sinks (c, `sinks`). The full-attention arm is also tested
    with the window switched on at test time only (d). Every arm gets the same steps, rate and examples; the
    rate is the YaRN protocol's continuation rate, fixed before any result (no arm is tuned). The test prompts
    are read where the queried list or span ends more than W tokens before the answer."""

    windows: tuple[int, ...] = (16, 32, 64)
    sinks: int = 4  # StreamingLLM keeps 4 (Xiao et al., arXiv 2309.17453)
    steps: int = 1500
    lr: float = 1e-3
    batch: int = 16
    tasks: tuple[str, ...] = ("list_recall", "copying")
    weights: tuple[int, ...] = (3, 1)
    warmup: int = 20
    eval_n: int = 1000  # test prompts per task (the far subsets are parts of them)


# The arms of the memory measurement: (label, the study model it continues, meta-tokens in its prompts,
# windowed, sinks kept). "full" is also read with the window switched on at test time only.
MEMORY_ARMS = {
    "full": ("Meta+RoPE, full attention (a)", "meta-rope", True, False, False),
    "meta": ("Meta+RoPE, window W", "meta-rope", True, True, False),
    "plain": ("GPT-2 (RoPE, no meta), window W (b)", "gpt2-rope", False, True, False),
    "sinks": ("Meta+RoPE, window W, 4 sinks instead of meta-tokens (c)", "meta-rope", False, True, True),
}


def memory_claims(protocol: MemoryProtocol) -> list[tuple[str, str, str, int]]:
    """The memory measurement's primary claims, fixed before its seeds run: (id, task, rival arm, W). At every
    window and on both tasks, on the prompts whose queried list or span ends more than W tokens before the
    answer, the windowed meta model beats the windowed model without meta-tokens (b) and the one with sinks
    (c); Holm across all of them, the same smallest effect of interest as the study's accuracy claims."""
    return [(f"M{i + 1}", task, rival, w) for i, (task, w, rival) in enumerate(
        (t, w, r) for t in protocol.tasks for w in protocol.windows for r in ("plain", "sinks"))]


def memory_preregistration(scale: Scale) -> dict:
    """What the memory measurement fixes before its seeds run; its digest is printed in its report."""
    p = scale.memory
    return {"claims": memory_claims(p), "protocol": dataclasses.asdict(p), "arms": MEMORY_ARMS,
            "sesoi_points": SESOI["accuracy_points"], "correction": CORRECTION, "far": "gap > W",
            "base": {"ft_len": scale.ft_len, "ft_steps": scale.ft_steps, "seed_base": scale.seed_base,
                     "ft_lr": {m: scale.lr_for(m) for m in ("meta-rope", "gpt2-rope")}}}


@dataclass(frozen=True)
class Claim:
    """One pre-registered primary claim: model A beats model B on a task at a length, both read on the same
    test prompts (paired), judged at the smallest effect of interest after Holm's correction."""

    id: str
    text: str
    a: str  # model; "<model>+yarn" is the model after the YaRN protocol
    b: str
    task: str
    length: str  # "L", "2L", "Ly" or "2Ly" (Ly: the YaRN protocol's fine-tuning length)
    paper: str  # the paper's number for it, as text


# The smallest effects of interest (declared before the confirmatory run): an interval entirely below one rules
# the claimed effect out ("not reproduced"); entirely above 0 shows it ("reproduced"); else inconclusive.
SESOI = {
    "accuracy_points": 5.0,  # exact match, percentage points (every accuracy comparison)
    "entropy_nats": 0.2,  # attention entropy, non-meta minus meta queries (paper +1.40)
    "logit": 0.2,  # max attention logit, real minus zeroed meta embedding (paper +1.26)
    "cosine": 0.05,  # centred cosine, near minus far, at meta-token queries
    "distortion_nats": 0.1,  # held-out VIB distortion at equal rate
    "loss_nats": 0.02,  # validation loss per text token
}

# The confirmatory study's primary claims (Holm across all of them). Parity is not among them: no model learned it
# at this scale in the exploratory study (docs/results/exploratory_tiny_lr3e-3/), so it is reported, exploratory.
PRIMARY_CLAIMS = (
    Claim("P1", "List Recall at L: Meta+RoPE beats GPT-2 (APE)", "meta-rope", "gpt2", "list_recall", "L", "+95.7"),
    Claim("P2", "Copying at L: Meta+RoPE beats GPT-2 (APE)", "meta-rope", "gpt2", "copying", "L", "+91.1"),
    Claim("P3", "List Recall at L: Meta+APE beats GPT-2 (APE)", "meta-ape", "gpt2", "list_recall", "L", "+95.1"),
    Claim("P4", "Copying at L: Meta+APE beats GPT-2 (APE)", "meta-ape", "gpt2", "copying", "L", "+90.7"),
    Claim("P5", "List Recall at 2L, beyond the fine-tuning length: Meta+RoPE beats GPT-2 (APE)", "meta-rope", "gpt2",
          "list_recall", "2L", "Fig. 3"),
    Claim("P6", "List Recall at 2L, beyond the fine-tuning length: Meta+APE beats GPT-2 (APE)", "meta-ape", "gpt2",
          "list_recall", "2L", "Fig. 3"),
    Claim("P7", "List Recall at 2 L_y with YaRN fine-tuned at L_y: Meta+RoPE beats GPT-2 (RoPE) under the same "
                "protocol", "meta-rope+yarn", "gpt2-rope+yarn", "list_recall", "2Ly", "85-98% at 2x"),
    Claim("P8", "List Recall at L: pre-training with meta-tokens beats the same model pre-trained with k = 0 "
                "(both fine-tuned and tested with meta-tokens)", "meta-rope", "meta-rope-k0", "list_recall", "L",
          "the paper's premise"),
)
CORRECTION = "Holm across the primary claims, one-sided 0.025 each way (a two-sided 95% level)"


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
    eval_factors: tuple[float, ...] = (1.0, 2.0)  # test lengths as multiples of L (each where it fits the window)
    lr_grid: tuple[float, ...] = ()  # `--tune`: the fine-tuning rates every tuned model tries on dev prompts
    ft_lrs: dict[str, float] = field(default_factory=dict)  # the frozen choice per tuned model; else ft_lr
    seed_base: int = 0  # seed index s trains and draws its test prompts with seed value seed_base + s
    tune_seed: int = 1000  # the seed value of `--tune` (its dev prompts; never a study seed)
    yarn: YarnProtocol | None = None
    demo: bool = False  # the first-run demo: its own short report (study.demo), not the study's
    memory: MemoryProtocol | None = None  # `--memory`: the windowed-attention measurement on this scale

    def lr_for(self, model: str) -> float:
        """The fine-tuning learning rate of a model: its own frozen choice, else its twin's, else ft_lr."""
        return self.ft_lrs.get(model, self.ft_lrs.get(LR_FROM.get(model, model), self.ft_lr))

    def lengths(self) -> list[int]:
        return sorted({round(f * self.ft_len) for f in self.eval_factors})

    def __post_init__(self) -> None:
        if not self.tasks or list(self.tasks) != [t for t in TASKS if t in self.tasks]:  # unknown, repeated, reordered
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, in that order, got {self.tasks}")
        if len(self.ft_weights) != len(self.tasks):
            raise ValueError(f"{len(self.ft_weights)} ft_weights for {len(self.tasks)} tasks")
        if len(self.tasks) < len(TASKS) and not self.tasks_note:
            raise ValueError("a scale that leaves tasks out says why (tasks_note)")
        if 1.0 not in self.eval_factors or (2.0 not in self.eval_factors and not self.demo):
            raise ValueError("eval_factors must hold 1 and 2 (L and 2L are where the claims are read)")
        if self.yarn is not None and any(t not in self.tasks for t in self.yarn.tasks):
            raise ValueError("the YaRN protocol's tasks must be tasks of the scale")
        if self.memory is not None and (any(t not in self.tasks for t in self.memory.tasks)
                                        or not all(0 < w < self.ft_len for w in self.memory.windows)):
            raise ValueError("the memory protocol needs its tasks among the scale's and windows shorter than L")


TINY_PRESETS = {"gpt2": "tiny-baseline", "meta-ape": "tiny-ape", "meta-rope": "tiny"}
TINY_MODELS = tiny_models(TINY_PRESETS, wide=144)

SCALES: dict[str, Scale] = {
    # only for tests: seconds
    "toy": Scale(tiny_models(TINY_PRESETS, wide=36),
                 ("model.base=toy", "model.block_size=256", "data.vocab_size=1024", "data.max_documents=120",
                  "train.max_steps=6", "train.batch_size=4", "train.eval_interval=0", "train.eval_batches=2",
                  "train.ckpt_interval=0"),
                 ft_len=120, ft_steps=4, ft_batch=4, ft_lr=1e-3, eval_n=4, analysis_n=4, rd_epochs=1, ft_warmup=1,
                 ft_curve_points=2, ft_curve_n=2, budget="under a minute", smoke_test=True,
                 eval_factors=(1.0, 1.5, 2.0), lr_grid=(1e-3, 2e-3), ft_lrs={"meta-rope": 2e-3},
                 yarn=YarnProtocol(scale=4, length=300, steps=2, lr=1e-3, batch=2, warmup=1),
                 memory=MemoryProtocol(windows=(16, 48), steps=2, batch=2, warmup=1, eval_n=12)),
    # The first-run demo (`make demo`, docs/study.md "The demo"): Meta+RoPE from scratch, with and without
    # meta-tokens in its prompts, on Copying at L = 96: the marker's effect, in minutes, with its interval.
    "demo": Scale({m: TINY_MODELS[m] for m in ("scratch-meta", "scratch-plain")}, (),
                  ft_len=96, ft_steps=1500, ft_batch=16, ft_lr=3e-3, eval_n=100, analysis_n=0, rd_epochs=0,
                  ft_warmup=50, ft_curve_points=6, ft_curve_n=48, tasks=("copying",), ft_weights=(1,),
                  tasks_note="the demo measures one thing, the meta-token's effect on Copying from scratch, in "
                             "minutes; the tiny study runs every task.",
                  eval_factors=(1.0,), budget="under 10 minutes on 2 CPU cores", demo=True),
    # docs/study.md, "The tiny recipe": L = 96 because Copying learns there in a third of the steps it needs at
    # 120, and List Recall gets ~3,400 steps of its own, what its jump needed in the probe. The learning rate of
    # each model is chosen on dev prompts from lr_grid (`metatokens reproduce --scale tiny --tune`,
    # docs/results/tune_tiny/) and frozen in ft_lrs; the confirmatory seeds draw seed values 100, 101, ...
    "tiny": Scale(TINY_MODELS, ("train.max_steps=500", "train.eval_interval=250", "train.ckpt_interval=250"),
                  ft_len=96, ft_steps=4500, ft_batch=16, ft_lr=3e-3, eval_n=100, analysis_n=500, rd_epochs=5,
                  tasks=("list_recall", "parity", "copying"), ft_weights=(10, 1, 2), ft_warmup=100,
                  ft_curve_points=10, ft_curve_n=64, budget="under 90 minutes per seed on 2 CPU cores",
                  tasks_note="its medium prompts need about 107 tokens with this tokenizer, more than L = 96 holds, "
                             "and the paper gives no number for it, so no claim is lost.",
                  eval_factors=(1.0, 1.5, 2.0, 2.5), lr_grid=(1e-3, 3e-3), seed_base=100,
                  # chosen on dev prompts, 2026-12-07 (docs/results/tune_tiny/REPORT.md): frozen before any seed ran
                  ft_lrs={"gpt2": 3e-3, "meta-ape": 1e-3, "meta-rope": 3e-3, "gpt2-rope": 3e-3},
                  yarn=YarnProtocol(scale=4, length=384, steps=300, lr=1e-3, batch=16,
                                    tasks=("list_recall", "copying"), weights=(3, 1)),
                  memory=MemoryProtocol()),
    "small": Scale(tiny_models(TINY_PRESETS, wide=432),
                   ("model.base=small", "data.vocab_size=8192", "train.max_steps=5000", "train.batch_size=32",
                    "train.eval_interval=500", "train.ckpt_interval=1000"),
                   ft_len=240, ft_steps=6000, ft_batch=32, ft_lr=5e-4, eval_n=500, analysis_n=500, rd_epochs=5,
                   ft_weights=(3, 1, 1, 3), budget="hours on one GPU", lr_grid=(3e-4, 1e-3), seed_base=100,
                   yarn=YarnProtocol(scale=4, length=384, steps=1000, lr=2e-4, batch=16,
                                     tasks=("list_recall", "copying"), weights=(1, 1))),
    "paper": Scale(tiny_models({"gpt2": "gpt2-small", "meta-ape": "gpt2-small-meta-ape",
                                "meta-rope": "gpt2-small-meta"}, wide=864), (),
                   ft_len=480, ft_steps=20000, ft_batch=16, ft_lr=1e-4, eval_n=1000, analysis_n=500, rd_epochs=5,
                   ft_warmup=500, budget="days on 4 A100s (the paper's section 4 set-up)", lr_grid=(5e-5, 1e-4, 2e-4),
                   seed_base=100,
                   yarn=YarnProtocol(scale=4, length=2048, steps=2000, lr=5e-5, batch=8,
                                     tasks=("list_recall", "copying"), weights=(1, 1), warmup=100)),
}


def preregistration(scale: Scale) -> dict:
    """What the confirmatory study fixes before its seeds run: the primary claims, the smallest effects
    of interest, the correction, the recipe and the seeds. Its digest is printed in the report."""
    return {"claims": [dataclasses.asdict(c) for c in PRIMARY_CLAIMS], "sesoi": SESOI, "correction": CORRECTION,
            "recipe": {"ft_lr": {m: scale.lr_for(m) for m in scale.models}, "ft_len": scale.ft_len,
                       "ft_steps": scale.ft_steps, "ft_batch": scale.ft_batch, "ft_weights": list(scale.ft_weights),
                       "eval_n": scale.eval_n, "eval_factors": list(scale.eval_factors),
                       "yarn": dataclasses.asdict(scale.yarn) if scale.yarn else None},
            "seed_base": scale.seed_base, "models": sorted(scale.models)}
