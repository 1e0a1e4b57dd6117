"""Analyses of trained meta-token models (docs/method.md sections 3 and 7; docs/analysis.md).

    entropy          attention entropy at meta vs non-meta queries; max-logit boost   (entropy.py)
    ablate           accuracy with the meta-token's position or embedding zeroed       (ablate.py)
    residual         centred cosine similarity against distance; logit lens            (residual.py)
    rate-distortion  variational information bottleneck probe, beta sweep              (rate_distortion.py)
                     its no-information line and learned-or-not verdicts               (no_information.py)
                     its figure                                                        (rate_distortion_plot.py)

Attention probabilities are recomputed from activations captured with forward hooks (trace.py,
attention.py), so the model itself is used exactly as trained and never modified.

May import: errors, fileio, plotting, progress, devices, model, tasks, runs, evaluation.
"""

from ..errors import AnalysisError
from .ablate import (
    VARIANTS,
    ablation_study,
    answer_accuracy,
    markdown_table,
    plot_ablation,
)
from .attention import (
    Attention,
    attention_entropy,
    attention_output,
    meta_attention,
    self_attention,
)
from .common import bootstrap_ci, load_for_analysis, model_variant
from .entropy import entropy_analysis, plot_entropy
from .no_information import (
    conditional_prior,
    label_entropy,
    learned_summary,
    no_information_losses,
)
from .rate_distortion import (
    DEFAULT_BETAS,
    VIBProbe,
    evaluate_vib,
    hidden_features,
    kl_to_standard_normal,
    rate_distortion_analysis,
    sweep,
    train_vib,
)
from .rate_distortion_plot import plot_rate_distortion
from .residual import (
    cosine_statistics,
    distance_bins,
    mean_states,
    plot_residual,
    residual_analysis,
    similarity_by_distance,
)
from .trace import Trace, trace

__all__ = [
    "DEFAULT_BETAS",
    "VARIANTS",
    "AnalysisError",
    "Attention",
    "Trace",
    "VIBProbe",
    "ablation_study",
    "answer_accuracy",
    "attention_entropy",
    "attention_output",
    "bootstrap_ci",
    "conditional_prior",
    "cosine_statistics",
    "distance_bins",
    "entropy_analysis",
    "evaluate_vib",
    "hidden_features",
    "kl_to_standard_normal",
    "label_entropy",
    "learned_summary",
    "load_for_analysis",
    "markdown_table",
    "mean_states",
    "meta_attention",
    "model_variant",
    "no_information_losses",
    "plot_ablation",
    "plot_entropy",
    "plot_rate_distortion",
    "plot_residual",
    "rate_distortion_analysis",
    "residual_analysis",
    "self_attention",
    "similarity_by_distance",
    "sweep",
    "train_vib",
    "trace",
]
