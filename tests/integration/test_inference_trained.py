"""bf16 decoding on a trained toy model: a model trained for 150 steps here (so that its logits have
clear winners) decodes the same greedy tokens in bf16 as in fp32. The untrained-model inference
tests are in tests/unit/test_inference.py."""

import copy

import pytest
import torch

from conftest import META, toy_model
from metatokens.devices import cpu_has_bf16
from metatokens.generation.decode import decoding_precision, generate_ids


@pytest.fixture(scope="module")
def trained_toy():
    """A toy RoPE model trained until its greedy continuation of a fixed token permutation is
    mostly right (next = perm[current], meta-tokens sprinkled in), so its logits have clear winners."""
    torch.manual_seed(0)
    model = toy_model(pos_encoding="rope").train()
    perm = torch.randperm(89) + 8  # ids 8..96
    succ = torch.zeros(97, dtype=torch.long)
    succ[8:] = perm

    def batch(n=16, T=32):
        x = torch.randint(8, 97, (n, 1))
        for _ in range(T):
            x = torch.cat((x, succ[x[:, -1:]]), 1)
        x[torch.rand(x.shape) < 0.1] = META
        return x[:, :-1], x[:, 1:]

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(*batch(), logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, batch(8)[0][:, :12]


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units (decoding_precision falls back to fp32)")
def test_bf16_decoding_gives_the_fp32_greedy_tokens_on_a_trained_model(trained_toy):
    """At least 95% of 8 x 24 greedy tokens equal fp32's (measured: all of them), and the bf16
    path really ran: its weights are bf16 and its logits differ from fp32's."""
    model, prompts = trained_toy
    fp32 = generate_ids(model, prompts, 24, temperature=0)
    bf16_model = copy.deepcopy(model)
    ctx = decoding_precision(bf16_model, "bf16", "cpu")
    assert bf16_model.lm_head.weight.dtype == torch.bfloat16
    assert bf16_model.rotary.inv_freq.dtype == torch.float32  # positions keep their precision
    with ctx():
        bf16 = generate_ids(bf16_model, prompts, 24, temperature=0)
        logits = bf16_model(prompts)[0].float()
    agreement = (fp32[:, 12:] == bf16[:, 12:]).float().mean().item()
    assert agreement >= 0.95, agreement
    diff = (logits - model(prompts)[0]).abs().max().item()
    assert 0 < diff < 0.5, diff
    learned = (fp32[:, 13:] == trained_toy_successor(prompts, fp32)).float().mean().item()
    assert learned > 0.5, learned  # the model did learn the pattern: these are confident tokens


def trained_toy_successor(prompts, generated):
    """How often each generated token follows its predecessor as the prompts' own pairs do."""
    pairs = {}
    for row in prompts.tolist():
        for a, b in zip(row, row[1:]):
            if META not in (a, b):
                pairs[a] = b
    prev = generated[:, 12:-1]
    return torch.tensor([[pairs.get(a, -1) for a in row] for row in prev.tolist()])
