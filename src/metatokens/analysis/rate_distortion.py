"""Rate-distortion of a variational information bottleneck probe (docs/method.md section 7; Alemi et al. 2017).

On a frozen model, a hidden state h (d numbers) is encoded as q(z|h) = N(mu(h), diag sigma^2(h))
with linear heads mu and log sigma^2, and decoded over the answer classes (the distinct first
tokens of the examples' answers) by a linear head that depends on the question value q:

    q(y | z, q) = softmax(E A_q z + b_q)

E (K, Z) holds one embedding per class, shared by all questions; A_q (Z, Z) is one map per
question value; b_q = ln p(y|q) is the no-information prior (no_information.py), fixed. The question value is
what the question asks beyond what the meta-token's place fixes (`tasks.question_key`: List
Recall's item number). The meta-token comes before the question, so its state cannot know which
item is asked; a decoder blind to it could not say "the item at place q" (an additive term in q
cannot either), whereas A_q can pick the place q out of z, so every representation can in
principle reach distortion 0. E is shared because 500 examples of 43 classes leave about two per
class and question value; on a synthetic state holding 3 of 43 items, 500 examples, it came 0.2
nats lower held out than a full head W_q per question (2.64 against 2.85; no information 3.80).
Trained on

    loss = E_{z ~ q(z|h)} [-log q(y|z,q)]  +  beta * KL(q(z|h) || N(0, I))
    KL   = 1/2 * sum_k (sigma_k^2 + mu_k^2 - 1 - ln sigma_k^2)

with one reparameterised sample per step, minibatches of 8 and Adam, from E = 0 (the probe starts
on the no-information line) and A_q = I. Reported per beta, in nats and averaged over examples:
rate = KL, distortion = E_z[-log q(y|z,q)] (Monte Carlo over `samples` draws of z), and per
held-out example the distortion, so a caller can bootstrap.

No information (the line a probe must get below) and whether it learned anything: no_information.py.

Representations (the paper's claim is last_meta < last_token, and last_meta_zero_pos
lower still): the final hidden state (after ln_f, or the residual after block `layer`) at the
last meta-token, at the last prompt token, and at the last meta-token of a copy of the model
with meta_pos="zero". Features are centred on the training set's mean and divided by one
scale, their root-mean-square deviation (an affine map the linear heads could learn, done so one
learning rate suits every model; one scale, not one per dimension, so a dimension that barely
varies is not blown up into noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AnalysisError
from ..model.gpt import GPT
from ..progress import progress_bar
from ..tasks.registry import question_key
from .common import check_fits, check_has_meta, model_variant
from .no_information import (
    conditional_prior,
    label_entropy,
    learned_summary,
    no_information_losses,
)
from .trace import trace

DEFAULT_BETAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def kl_to_standard_normal(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(log_var)) || N(0, I)) per row, in nats."""
    return 0.5 * (log_var.exp() + mu.square() - 1.0 - log_var).sum(-1)


class VIBProbe(nn.Module):
    """Linear Gaussian encoder; a decoder whose linear head depends on the question value q:
    logits = E A_q z + b_q, with class embeddings E (K, Z) shared by all questions, a (Z, Z) map A_q
    per question, and b_q the log no-information prior p(y|q) (fixed)."""

    def __init__(self, d_in: int, z_dim: int, n_classes: int, n_questions: int = 1):
        super().__init__()
        self.mu = nn.Linear(d_in, z_dim)
        self.log_var = nn.Linear(d_in, z_dim)
        # E = 0 at the start, so the probe starts on the no-information line; A_q = I
        self.classes = nn.Parameter(torch.zeros(n_classes, z_dim))
        self.maps = nn.Parameter(torch.eye(z_dim).repeat(n_questions, 1, 1))
        self.register_buffer("bias", torch.zeros(n_questions, n_classes))  # set by train_vib

    def decode(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Logits E A_q z + b_q: z (..., N, Z), q (N,) question indices -> (..., N, K)."""
        return torch.einsum("...nz,nwz->...nw", z, self.maps[q]) @ self.classes.T + self.bias[q]

    def forward(self, h: torch.Tensor, y: torch.Tensor, q: torch.Tensor | None = None, *, samples: int = 1,
                generator=None):
        """(cross-entropy per row averaged over `samples` draws of z, KL per row)."""
        q = torch.zeros_like(y) if q is None else q
        mu, log_var = self.mu(h), self.log_var(h)
        std = (0.5 * log_var).exp()
        eps = torch.randn((samples, *mu.shape), generator=generator, device=h.device, dtype=h.dtype)
        logits = self.decode(mu + std * eps, q)  # (S, N, K)
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(samples), reduction="none").view(samples, -1).mean(0)
        return ce, kl_to_standard_normal(mu, log_var)


@contextmanager
def one_thread():
    """Intra-op threads off: the probe's tensors are tiny, and on CPU the threads cost far more than
    they save (measured 30x slower with 2 threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_vib(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    beta: float,
    *,
    q: torch.Tensor | None = None,
    n_questions: int = 1,
    z_dim: int = 16,
    epochs: int = 5,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> VIBProbe:
    """Fit a VIBProbe on features x (N, d), labels y (N,) and question indices q (N,; None: one
    question) with Adam; seeded and deterministic."""
    q = torch.zeros_like(y) if q is None else q
    with one_thread():
        g = torch.Generator(device=x.device).manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the probe's initial weights
            probe = VIBProbe(x.size(1), z_dim, n_classes, n_questions).to(x.device)
        # The decoder's biases are the log no-information prior, and stay so: with W_q = 0 (the start)
        # the probe is the no-information line exactly, and training spends its steps on what h adds.
        # (Trained, the biases drifted toward the fitting set's raw label counts per question, and
        # every probe ended 0.1 nats above the line on held-out examples whatever h held.)
        prior, _ = conditional_prior(y.cpu(), q.cpu(), n_classes, n_questions)
        probe.bias.copy_(prior.log().to(probe.bias))
        opt = torch.optim.Adam(probe.parameters(), lr=lr)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g, device=x.device)
            for start in range(0, len(x), batch_size):
                rows = order[start : start + batch_size]
                ce, kl = probe(x[rows], y[rows], q[rows], generator=g)
                loss = (ce + beta * kl).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return probe.eval()


@torch.no_grad()
def evaluate_vib(probe: VIBProbe, x: torch.Tensor, y: torch.Tensor, q: torch.Tensor | None = None, *,
                 samples: int = 32, seed: int = 0) -> dict[str, Any]:
    """Rate (mean KL, nats), distortion (mean E_z[-log q(y|z,q)], nats), accuracy of argmax at z = mu,
    and `distortion_per_example` (a list)."""
    q = torch.zeros_like(y) if q is None else q
    g = torch.Generator(device=x.device).manual_seed(seed)
    ce, kl = probe(x, y, q, samples=samples, generator=g)
    accuracy = (probe.decode(probe.mu(x), q).argmax(-1) == y).float().mean()
    return {"rate": float(kl.mean()), "distortion": float(ce.mean()), "accuracy": float(accuracy),
            "distortion_per_example": ce.tolist()}


def sweep(
    train: tuple[torch.Tensor, ...],
    test: tuple[torch.Tensor, ...] | None,
    n_classes: int,
    betas: Sequence[float],
    *,
    n_questions: int = 1,
    samples: int = 32,
    seed: int = 0,
    **train_kw: Any,
) -> list[dict[str, Any]]:
    """One probe per beta (same seed each, so only beta differs); training and held-out numbers.
    `train` and `test` are (x, y) or (x, y, q); held-out points keep `test_distortion_per_example`."""
    x, y, q = (*train, None)[:3]
    # Centre, and divide by one scale for all dimensions (unit mean variance). Per-dimension
    # scaling would blow up dimensions that barely vary on the training examples.
    mean = x.mean(0)
    std = (x - mean).square().mean().sqrt().clamp_min(1e-8) if len(x) > 1 else torch.ones(())
    x = (x - mean) / std
    if test is not None:
        x_test, y_test, q_test = (*test, None)[:3]
        x_test = (x_test - mean) / std
    points = []
    for beta in betas:
        with one_thread():
            probe = train_vib(x, y, n_classes, beta, q=q, n_questions=n_questions, seed=seed, **train_kw)
            fitted = evaluate_vib(probe, x, y, q, samples=samples, seed=seed)
            del fitted["distortion_per_example"]
            point = {"beta": float(beta), **fitted}
            if test is not None:
                held = evaluate_vib(probe, x_test, y_test, q_test, samples=samples, seed=seed)
                point.update({f"test_{k}": v for k, v in held.items()})
        points.append(point)
    return points


@torch.no_grad()
def hidden_features(
    model: GPT, examples: Sequence, *, layer: int | None = None, batch_size: int = 16, progress: bool = False,
    desc: str = "features",
) -> dict[str, torch.Tensor]:
    """{"last_meta": (N, C), "last_token": (N, C)}: final hidden states (after ln_f) at the last
    meta-token and at the last prompt token; with `layer`, the residual after block `layer`
    (0 = the embeddings) instead. Prompts run `batch_size` at a time, padded on the right (the model
    is causal, so padding after a prompt changes none of its states)."""
    device = next(model.parameters()).device
    pad = 0 if model.config.meta_token_id != 0 else 1  # never the meta id, so padding adds no meta-token
    out: dict[str, list[torch.Tensor]] = {"last_meta": [], "last_token": []}
    # One CPU thread here too: on the busy 2-core machine, 64 prompts of a 1.2M-parameter model took
    # 0.3 s with one thread and 3-27 s with two (batch 32 to 1).
    with one_thread(), progress_bar(total=len(examples), desc=desc, unit="example", disable=not progress) as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            T = max(len(e.prompt_ids) for e in batch)
            idx = torch.tensor([list(e.prompt_ids) + [pad] * (T - len(e.prompt_ids)) for e in batch], device=device)
            h = model.hidden_states(idx) if layer is None else trace(model, idx).residual[layer]
            rows = torch.arange(len(batch), device=device)
            last_meta = torch.tensor([max(e.meta_positions) for e in batch], device=device)
            last_token = torch.tensor([len(e.prompt_ids) - 1 for e in batch], device=device)
            out["last_meta"].append(h[rows, last_meta].float().cpu())
            out["last_token"].append(h[rows, last_token].float().cpu())
            bar.update(len(batch))
    return {k: torch.cat(v) for k, v in out.items()}


def _indices(values: Sequence[Hashable]) -> tuple[list[Hashable], dict[Hashable, int]]:
    distinct = sorted(set(values), key=repr)  # repr: question values of mixed types still sort
    return distinct, {v: i for i, v in enumerate(distinct)}


def rate_distortion_analysis(
    model: GPT,
    train_examples: Sequence,
    test_examples: Sequence = (),
    *,
    betas: Sequence[float] = DEFAULT_BETAS,
    layer: int | None = None,
    z_dim: int = 16,
    epochs: int = 5,
    batch_size: int = 8,
    lr: float = 3e-3,
    samples: int = 32,
    seed: int = 0,
    question: Callable[[Any], Hashable] | None = question_key,
    progress: bool = False,
) -> dict[str, Any]:
    """The beta sweep for the three representations (see the module docstring). `question` maps an
    example to its question value (None: the decoder sees no question, one head for all)."""
    if not train_examples:
        raise AnalysisError("rate-distortion needs at least one training example")
    if not betas or any(not b >= 0 for b in betas):
        raise AnalysisError(f"betas must be non-negative numbers, got {list(betas)}")
    if layer is not None and not 0 <= layer <= model.config.n_layer:
        raise AnalysisError(f"--layer must be in 0..{model.config.n_layer} (0 = embeddings), got {layer}")
    for where, batch in (("training examples", train_examples), ("held-out examples", test_examples)):
        check_has_meta(batch, f"rate-distortion {where}")
        check_fits(model, batch)
    zero_pos = model_variant(model, meta_pos="zero")
    features = {}
    for split, batch in (("train", train_examples), ("test", test_examples)):
        if not batch:
            continue
        full = hidden_features(model, batch, layer=layer, progress=progress, desc=f"{split} features")
        zeroed = hidden_features(zero_pos, batch, layer=layer, progress=progress, desc=f"{split} features, meta pos 0")
        features[split] = {
            "last_meta": full["last_meta"],
            "last_token": full["last_token"],
            "last_meta_zero_pos": zeroed["last_meta"],
        }
    everything = [*train_examples, *test_examples]
    # Classes: the distinct first answer tokens of all examples, so held-out labels have a row too;
    # the same for question values.
    classes, to_class = _indices([e.answer_ids[0] for e in everything])
    questions, to_question = _indices([question(e) if question else () for e in everything])
    K, Q = len(classes), len(questions)

    def labels(batch):
        y = torch.tensor([to_class[e.answer_ids[0]] for e in batch], dtype=torch.long)
        q = torch.tensor([to_question[question(e) if question else ()] for e in batch], dtype=torch.long)
        return y, q

    y_train, q_train = labels(train_examples)
    y_test, q_test = labels(test_examples) if test_examples else (None, None)
    with one_thread():
        _, strength = conditional_prior(y_train, q_train, K, Q)
        no_info_train = no_information_losses((y_train, q_train), (y_train, q_train), K, Q, strength)
        no_info_test = no_information_losses((y_train, q_train), (y_test, q_test), K, Q, strength) if test_examples else None
    curves, learned = {}, {}
    names = list(features["train"])
    for name in progress_bar(names, desc="beta sweeps", unit="representation", disable=not progress):
        test = (features["test"][name], y_test, q_test) if test_examples else None
        curves[name] = sweep(
            (features["train"][name], y_train, q_train), test, K, betas, n_questions=Q, samples=samples, seed=seed,
            z_dim=z_dim, epochs=epochs, batch_size=batch_size, lr=lr,
        )
        if test_examples:
            learned[name] = learned_summary(curves[name], no_info_test.tolist(), seed=seed)
    return {
        "n_train": len(train_examples),
        "n_test": len(test_examples),
        "n_classes": K,
        "questions": [list(v) if isinstance(v, tuple) else v for v in questions],
        "question_counts_train": torch.bincount(q_train, minlength=Q).tolist(),
        "label_entropy_train": label_entropy(y_train, K),
        "label_entropy_test": label_entropy(y_test, K) if test_examples else None,
        "prior_strength": strength if math.isfinite(strength) else "inf (the label marginal)",
        "no_information_train": float(no_info_train.mean()),
        "no_information_test": float(no_info_test.mean()) if test_examples else None,
        "no_information_test_per_example": no_info_test.tolist() if test_examples else None,
        "layer": "final (after ln_f)" if layer is None else layer,
        "probe": {"z_dim": z_dim, "epochs": epochs, "batch_size": batch_size, "lr": lr, "samples": samples,
                  "seed": seed, "decoder": "softmax(E A_q z + b_q), a map A_q per question value" if Q > 1 else "softmax(E z + b)"},
        "betas": [float(b) for b in betas],
        "curves": curves,
        "learned": learned or None,
    }
