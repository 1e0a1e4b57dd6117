"""Rate-distortion of a variational information bottleneck probe (docs/method.md section 7; Alemi et al. 2017).

On a frozen model, a hidden state h (d numbers) is encoded as q(z|h) = N(mu(h), diag sigma^2(h))
with linear heads mu and log sigma^2, and decoded by softmax(W z + b) over the answer classes
(the distinct first tokens of the examples' answers). Trained on

    loss = E_{z ~ q(z|h)} [-log q(y|z)]  +  beta * KL(q(z|h) || N(0, I))
    KL   = 1/2 * sum_k (sigma_k^2 + mu_k^2 - 1 - ln sigma_k^2)

with one reparameterised sample per step, Adam, and the decoder's bias started at the smoothed
label prior (the rate-0 optimum). Reported per beta, in nats and averaged over examples:
rate = KL, distortion = E_z[-log q(y|z)] (Monte Carlo over `samples` draws of z). At beta >= 1
the optimum carries no information (rate 0; distortion = cross-entropy under the label prior,
H(y) on the training examples); as
beta falls the probe buys lower distortion with more rate. The curve of a representation that
holds the answer more plainly lies lower.

Representations (the paper's claim is last_meta < last_token, and last_meta_zero_pos
lower still): the final hidden state (after ln_f, or the residual after block `layer`) at the
last meta-token, at the last prompt token, and at the last meta-token of a copy of the model
with meta_pos="zero". Features are centred on the training set's mean and divided by one
scale, their root-mean-square deviation (an affine map the linear heads could learn, done so one
learning rate suits every model; one scale, not one per dimension, so a dimension that barely
varies is not blown up into noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AnalysisError
from ..model.gpt import GPT
from ..plotting import analysis_title, pyplot, save_figure, wrap_title
from ..progress import progress_bar
from .common import check_fits, check_has_meta, example_ids, model_variant
from .trace import trace

DEFAULT_BETAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def kl_to_standard_normal(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(log_var)) || N(0, I)) per row, in nats."""
    return 0.5 * (log_var.exp() + mu.square() - 1.0 - log_var).sum(-1)


class VIBProbe(nn.Module):
    def __init__(self, d_in: int, z_dim: int, n_classes: int):
        super().__init__()
        self.mu = nn.Linear(d_in, z_dim)
        self.log_var = nn.Linear(d_in, z_dim)
        self.decoder = nn.Linear(z_dim, n_classes)

    def forward(self, h: torch.Tensor, y: torch.Tensor, *, samples: int = 1, generator=None):
        """(cross-entropy per row averaged over `samples` draws of z, KL per row)."""
        mu, log_var = self.mu(h), self.log_var(h)
        std = (0.5 * log_var).exp()
        eps = torch.randn((samples, *mu.shape), generator=generator, device=h.device, dtype=h.dtype)
        logits = self.decoder(mu + std * eps)  # (S, N, K)
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(samples), reduction="none").view(samples, -1).mean(0)
        return ce, kl_to_standard_normal(mu, log_var)


def train_vib(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    beta: float,
    *,
    z_dim: int = 16,
    epochs: int = 5,
    batch_size: int = 1,
    lr: float = 3e-3,
    seed: int = 0,
) -> VIBProbe:
    """Fit a VIBProbe on features x (N, d) and labels y (N,) with Adam; seeded and deterministic."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the probe's initial weights
        probe = VIBProbe(x.size(1), z_dim, n_classes).to(x.device)
    with torch.no_grad():
        # Start the decoder at the label prior, the best a probe without information can do, so
        # the few steps of the paper's protocol are spent on what h adds, not on the marginal.
        probe.decoder.bias.copy_(label_prior(y, n_classes).log().to(probe.decoder.bias.dtype))
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    threads = torch.get_num_threads()
    # The probe's tensors are tiny: on CPU, intra-op threads cost far more than they save
    # (measured 30x slower with 2 threads on a busy 2-core machine).
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g, device=x.device)
            for start in range(0, len(x), batch_size):
                rows = order[start : start + batch_size]
                ce, kl = probe(x[rows], y[rows], generator=g)
                loss = (ce + beta * kl).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return probe.eval()


@torch.no_grad()
def evaluate_vib(probe: VIBProbe, x: torch.Tensor, y: torch.Tensor, *, samples: int = 32, seed: int = 0) -> dict[str, float]:
    """Rate (mean KL, nats), distortion (mean E_z[-log q(y|z)], nats), and accuracy of argmax at z = mu."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    ce, kl = probe(x, y, samples=samples, generator=g)
    accuracy = (probe.decoder(probe.mu(x)).argmax(-1) == y).float().mean()
    return {"rate": float(kl.mean()), "distortion": float(ce.mean()), "accuracy": float(accuracy)}


def label_prior(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Label frequencies with add-one (Laplace) smoothing, so no class has probability 0."""
    counts = torch.bincount(y, minlength=n_classes).double() + 1.0
    return counts / counts.sum()


def no_information_distortion(y_fit: torch.Tensor, y_eval: torch.Tensor, n_classes: int) -> float:
    """Cross-entropy of y_eval under the smoothed prior of y_fit: the distortion at rate 0."""
    return float(-label_prior(y_fit, n_classes).log()[y_eval].mean())


def label_entropy(y: torch.Tensor, n_classes: int) -> float:
    """H(y) in nats: the distortion of a probe that carries no information about h."""
    p = torch.bincount(y, minlength=n_classes).double() / len(y)
    return float(torch.special.entr(p).sum())


def sweep(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None,
    n_classes: int,
    betas: Sequence[float],
    *,
    samples: int = 32,
    seed: int = 0,
    **train_kw: Any,
) -> list[dict[str, float]]:
    """One probe per beta (same seed each, so only beta differs); train and held-out numbers."""
    x, y = train
    # Centre, and divide by one scale for all dimensions (unit mean variance). Per-dimension
    # scaling would blow up dimensions that barely vary on the training examples.
    mean = x.mean(0)
    std = (x - mean).square().mean().sqrt().clamp_min(1e-8) if len(x) > 1 else torch.ones(())
    x = (x - mean) / std
    x_test = (test[0] - mean) / std if test is not None else None
    points = []
    for beta in betas:
        probe = train_vib(x, y, n_classes, beta, seed=seed, **train_kw)
        point = {"beta": float(beta), **evaluate_vib(probe, x, y, samples=samples, seed=seed)}
        if test is not None:
            held = evaluate_vib(probe, x_test, test[1], samples=samples, seed=seed)
            point.update({f"test_{k}": v for k, v in held.items()})
        points.append(point)
    return points


@torch.no_grad()
def hidden_features(
    model: GPT, examples: Sequence, *, layer: int | None = None, progress: bool = False, desc: str = "features"
) -> dict[str, torch.Tensor]:
    """{"last_meta": (N, C), "last_token": (N, C)}: final hidden states (after ln_f) at the last
    meta-token and at the last prompt token; with `layer`, the residual after block `layer`
    (0 = the embeddings) instead."""
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {"last_meta": [], "last_token": []}
    for example in progress_bar(examples, desc=desc, unit="example", disable=not progress):
        idx = example_ids(example, device)
        if layer is None:
            h = model.hidden_states(idx)[0]
        else:
            h = trace(model, idx).residual[layer][0]
        last_meta = int(model.meta_mask(idx)[0].nonzero().max())
        out["last_meta"].append(h[last_meta].float().cpu())
        out["last_token"].append(h[-1].float().cpu())
    return {k: torch.stack(v) for k, v in out.items()}


def rate_distortion_analysis(
    model: GPT,
    train_examples: Sequence,
    test_examples: Sequence = (),
    *,
    betas: Sequence[float] = DEFAULT_BETAS,
    layer: int | None = None,
    z_dim: int = 16,
    epochs: int = 5,
    batch_size: int = 1,
    lr: float = 3e-3,
    samples: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """The beta sweep for the three representations (see the module docstring)."""
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
    # Classes: the distinct first answer tokens of all examples, so held-out labels have a row too.
    classes = sorted({e.answer_ids[0] for e in [*train_examples, *test_examples]})
    to_class = {token: c for c, token in enumerate(classes)}

    def labels(batch):
        return torch.tensor([to_class[e.answer_ids[0]] for e in batch], dtype=torch.long)

    y_train = labels(train_examples)
    y_test = labels(test_examples) if test_examples else None
    curves = {}
    names = list(features["train"])
    for name in progress_bar(names, desc="beta sweeps", unit="representation", disable=not progress):
        test = (features["test"][name], y_test) if y_test is not None else None
        curves[name] = sweep(
            (features["train"][name], y_train), test, len(classes), betas, samples=samples, seed=seed,
            z_dim=z_dim, epochs=epochs, batch_size=batch_size, lr=lr,
        )
    return {
        "n_train": len(train_examples),
        "n_test": len(test_examples),
        "n_classes": len(classes),
        "label_entropy_train": label_entropy(y_train, len(classes)),
        "label_entropy_test": label_entropy(y_test, len(classes)) if y_test is not None else None,
        "no_information_train": no_information_distortion(y_train, y_train, len(classes)),
        "no_information_test": no_information_distortion(y_train, y_test, len(classes)) if y_test is not None else None,
        "layer": "final (after ln_f)" if layer is None else layer,
        "probe": {"z_dim": z_dim, "epochs": epochs, "batch_size": batch_size, "lr": lr, "samples": samples, "seed": seed},
        "betas": [float(b) for b in betas],
        "curves": curves,
    }


LINE_LABELS = {
    "last_meta": "last meta-token",
    "last_token": "last token",
    "last_meta_zero_pos": "last meta-token, meta pos. zeroed",
}


def _label_betas(ax, points: list[tuple[float, float, float]], obstacles: list[tuple[float, float]] = (),
                 fontsize: float = 7.0) -> list:
    """Write "β=B" beside the (rate, distortion, beta) points without two labels overlapping each
    other or covering a marker (of `points` or `obstacles`, (rate, distortion) pairs): each label
    takes the first free place of four around its point; a point with none free adds its beta to the
    nearest label ("β=0.5, 1"). Call once the axes' limits and size are final."""
    fig = ax.figure
    ax.get_xlim(), ax.get_ylim()  # brings the view limits up to date with what was drawn
    box = ax.get_position()
    width_pt, height_pt = box.width * fig.get_size_inches()[0] * 72, box.height * fig.get_size_inches()[1] * 72
    to_axes = ax.transLimits  # data -> axes fraction, with the current limits

    def extent(text: str) -> tuple[float, float]:  # label width, height in points
        return 0.6 * fontsize * len(text), 1.2 * fontsize

    placed: list[dict] = []  # each: point (pt), offset (pt), betas

    def rect(p: dict) -> tuple[float, float, float, float]:
        w, h = extent("β=" + ", ".join(f"{b:g}" for b in p["betas"]))
        x, y = p["at"][0] + p["offset"][0], p["at"][1] + p["offset"][1]
        x0 = x - w if p["offset"][0] < 0 else x
        y0 = y - h if p["offset"][1] < 0 else y
        return x0, y0, x0 + w, y0 + h

    def overlaps(r, others) -> bool:
        return any(r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3] for o in others)

    def in_points(rate: float, distortion: float) -> tuple[float, float]:
        fx, fy = to_axes.transform((rate, distortion))
        return fx * width_pt, fy * height_pt

    anchors = [in_points(r, d) for r, d, _ in points]
    markers = [(mx - 3, my - 3, mx + 3, my + 3) for mx, my in anchors + [in_points(r, d) for r, d in obstacles]]
    for (_, _, beta), at in zip(points, anchors):
        if not (np.isfinite(at[0]) and np.isfinite(at[1])):
            continue
        others = [rect(p) for p in placed] + markers
        for offset in ((4, 3), (4, -3), (-4, 3), (-4, -3)):
            candidate = {"at": at, "offset": offset, "betas": [beta]}
            if not overlaps(rect(candidate), others):
                placed.append(candidate)
                break
        else:
            if placed:
                nearest = min(placed, key=lambda p: (p["at"][0] - at[0]) ** 2 + (p["at"][1] - at[1]) ** 2)
                nearest["betas"].append(beta)
            else:
                placed.append({"at": at, "offset": (4, 3), "betas": [beta]})
    out = []
    for p in placed:
        text = "β=" + ", ".join(f"{b:g}" for b in p["betas"])
        x, y = to_axes.inverted().transform((p["at"][0] / width_pt, p["at"][1] / height_pt))
        out.append(ax.annotate(text, (x, y), textcoords="offset points", xytext=p["offset"], fontsize=fontsize,
                               ha="left" if p["offset"][0] > 0 else "right",
                               va="bottom" if p["offset"][1] > 0 else "top"))
    return out


def plot_rate_distortion(result: dict[str, Any], path, title: str = "") -> None:
    """Distortion against rate, one line per representation, betas marked; one panel per split."""
    plt = pyplot()
    splits = [("", "training examples", "no_information_train")]
    if result.get("n_test"):
        splits.append(("test_", "held-out examples", "no_information_test"))
    fig, axes = plt.subplots(1, len(splits), figsize=(6.6 * len(splits), 5.2), squeeze=False)
    marks = []
    for ax, (prefix, name, entropy_key) in zip(axes[0], splits):
        for key, points in result["curves"].items():
            rate = [p[f"{prefix}rate"] for p in points]
            distortion = [p[f"{prefix}distortion"] for p in points]
            ax.plot(rate, distortion, "o-", label=LINE_LABELS.get(key, key), alpha=0.85)
        if result.get(entropy_key) is not None:
            ax.axhline(result[entropy_key], color="gray", ls=":", lw=1, label="rate 0: the label prior")
        ax.set_xlabel("rate: KL(q(z|h) || N(0, I)) (nats)")
        ax.set_ylabel("distortion: cross-entropy of the answer (nats)")
        count = result.get("n_test" if prefix else "n_train")
        ax.set_title(f"{name}" + (f" (n = {count})" if count else "") + "; β marked on the first line", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        first = next(iter(result["curves"].values()))  # the sweep is the same for all lines
        marks.append((ax, [(p[f"{prefix}rate"], p[f"{prefix}distortion"], p["beta"]) for p in first],
                      [(p[f"{prefix}rate"], p[f"{prefix}distortion"]) for c in result["curves"].values() for p in c]))
    fig.suptitle(wrap_title(analysis_title(result, "rate-distortion of a VIB probe", title), 110), fontsize=11)
    fig.tight_layout()
    for ax, points, obstacles in marks:  # once the layout is final, so label sizes are known in the axes' units
        _label_betas(ax, points, obstacles)
    save_figure(fig, path)
