import pytest
import torch

from metatokens.model.config import model_shape
from metatokens.model import GPT

META = 7  # meta-token id used by the toy models in these tests


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


# Tiny tensors gain nothing from a second thread, and on a shared 2-core machine the spin-waiting
# of torch's thread pool slows tests several-fold (and the subprocess tests compete for cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
