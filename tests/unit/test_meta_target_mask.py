"""Meta-token positions carry no loss target: masked by the model itself, and by the pre-training loader."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import META, mixed_batch, toy_model
from metatokens.data.inject import MetaBlockLoader, val_batches

IGNORE = -100
LOADER_META = 1  # the loader test's meta id: below its text tokens 2, 3, 4 ...


@pytest.mark.parametrize("loss_only", [False, True])
def test_model_loss_leaves_out_meta_targets_it_is_given(loss_only):
    """Targets that hold the meta id (not -100) are still not scored: the model's own mask. The loss is
    the cross-entropy over the other targets, from the logits by hand; with the meta targets scored, it
    would differ (checked, so the case is one where the mask matters)."""
    model = toy_model(pos_encoding="rope")
    idx = mixed_batch()
    targets = torch.roll(idx, -1, 1)  # raw next tokens: the meta id where a meta-token follows
    targets[0, :4] = IGNORE
    assert (targets == META).sum() > 10
    with torch.no_grad():
        logits, _ = model(idx)
        _, loss = model(idx, targets, logits=not loss_only)
    scored = (targets != IGNORE) & (targets != META)
    expected = F.cross_entropy(logits[scored], targets[scored])
    with_meta = F.cross_entropy(logits[targets != IGNORE], targets[targets != IGNORE])
    assert abs(with_meta.item() - expected.item()) > 1e-3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5), (
        f"loss {loss.item():.6f}; without meta targets {expected.item():.6f}, with them {with_meta.item():.6f}")


def test_loader_and_validation_batches_give_meta_positions_no_target():
    """Hand-checkable rows (text tokens 2, 3, 4 ... never the meta id): a target is -100 exactly where the
    next token is a meta-token, and the next token itself everywhere else."""
    tokens = np.arange(2, 2 + 400, dtype=np.int64)
    n = 16
    batches = [MetaBlockLoader(tokens, block_size=n, batch_size=3, k=0.25, meta_id=LOADER_META, seed=1).next_batch(),
               next(iter(val_batches(tokens, n, 3, 0.25, LOADER_META, seed=1)))]
    for x, y in batches:
        assert (x == LOADER_META).sum().item() == 3 * 4  # round(0.25 * 16) = 4 a row
        nxt = x[:, 1:]  # the token each target but the last one should be
        assert (y == LOADER_META).sum().item() == 0, f"{(y == LOADER_META).sum().item()} targets are the meta id"
        assert torch.equal(y[:, :-1][nxt == LOADER_META], torch.full_like(y[:, :-1][nxt == LOADER_META], IGNORE))
        assert torch.equal(y[:, :-1][nxt != LOADER_META], nxt[nxt != LOADER_META])
        assert (y[:, -1] != IGNORE).all()  # the final target is text (the next row's first token)
        # scored targets per row: n minus the meta-tokens at positions 1 .. n - 1 (a meta at 0 is no target)
        assert (y != IGNORE).sum(1).tolist() == [n - int((row[1:] == LOADER_META).sum()) for row in x]
