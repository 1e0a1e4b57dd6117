"""Meta-token policies at inference, streamed generation, the `generate` command, and the
performance paths of the model (packed meta rows, preallocated KV cache) against references."""

import copy
import io

import pytest
import torch

from conftest import META, meta_favourite_model, mixed_batch, small_model, toy_model
from metatokens import cli
from metatokens.runs.model_folder import save_pretrained
from metatokens.generation.decode import decoding_precision, MetaPolicy, StreamDecoder, encode_prompt, generate_ids, insert_every, stream_tokens
from metatokens.errors import MetaPolicyError
from metatokens.model import GPT, KVCache
from metatokens.tokenizer import META_TOKEN

CMD = "metatokens.cli.generate"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Toy models gain nothing from threads, and on a shared machine OpenMP threads spin-waiting
    # for a busy core made this file 20x slower (40 s instead of 2 s on 2 shared cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_tokenizer):
    model = small_model(small_tokenizer, pos_encoding="ape")
    return save_pretrained(tmp_path_factory.mktemp("run") / "model", model, small_tokenizer)


# ---------------------------------------------------------------- policies and prompts


def test_policy_strings():
    assert MetaPolicy.parse("none") == MetaPolicy("none")
    assert MetaPolicy.parse("marked") == MetaPolicy("marked")
    assert MetaPolicy.parse("every:12") == MetaPolicy("every", 12)
    assert str(MetaPolicy.parse("every:3")) == "every:3"
    for bad in ["every:0", "every:-1", "every:x", "every:", "every", "sometimes", "", "Marked"]:
        with pytest.raises(MetaPolicyError, match="none, every:N"):
            MetaPolicy.parse(bad)


def test_marked_prompt_puts_meta_ids_exactly_at_the_markers(small_tokenizer):
    pieces = ["the meta", " token marks", "", " a place. ", ""]
    text = META_TOKEN.join(pieces)  # markers in the middle, twice in a row, and at the end
    ids = encode_prompt(small_tokenizer, text, "marked")
    meta = small_tokenizer.meta_token_id
    assert ids.count(meta) == len(pieces) - 1
    # split at the meta ids: each stretch of text ids decodes to the text between two markers
    stretches, cur = [], []
    for i in ids:
        if i == meta:
            stretches.append(cur)
            cur = []
        else:
            cur.append(i)
    stretches.append(cur)
    assert [small_tokenizer.decode(s) for s in stretches] == pieces
    assert small_tokenizer.decode(ids, skip_meta=False) == text
    # without the marked policy the marker is ordinary text and yields no meta id
    plain = encode_prompt(small_tokenizer, text, "none")
    assert meta not in plain and small_tokenizer.decode(plain) == text


@pytest.mark.parametrize("n", [1, 2, 5])
def test_every_n_prompt_has_meta_after_each_n_text_tokens(small_tokenizer, n):
    text = "Numbers 123 456 and words; more words here."
    plain = small_tokenizer.encode(text)
    ids = encode_prompt(small_tokenizer, text, f"every:{n}")
    meta = small_tokenizer.meta_token_id
    expected = [p for p in range(len(ids)) if (p + 1) % (n + 1) == 0]  # text, ..., text (n), meta
    assert [p for p, i in enumerate(ids) if i == meta] == expected
    assert [i for i in ids if i != meta] == plain
    # a meta-token already present restarts the count and is not doubled
    assert insert_every([5, meta, 8, 9, 10], 2, meta) == [5, meta, 8, 9, meta, 10]
    assert insert_every([5, 6, meta, 8, 9], 2, meta) == [5, 6, meta, 8, 9, meta]
    assert insert_every([8, 9, 10], 2, meta, since=2) == [meta, 8, 9, meta, 10]


# ---------------------------------------------------------------- generation against a reference


def reference_generate(model, prompt, n, *, every=None, temperature=0.0, top_k=None, generator=None, vocab_limit=None):
    """Full recomputation through GPT.forward each step, policy applied by hand."""
    seq = prompt.clone()
    run = 0
    for i in reversed(prompt[0].tolist()):
        if i == META:
            break
        run += 1
    sampled = 0
    while sampled < n:
        if every is not None and run >= every:
            seq = torch.cat((seq, torch.full((seq.size(0), 1), META)), 1)
            run = 0
            continue
        with torch.no_grad():
            logits = model(seq)[0][:, -1].float()
        logits[:, META] = float("-inf")
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = logits.sort(-1, descending=True).values[:, top_k - 1 : top_k]
                logits[logits < kth] = float("-inf")
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        seq = torch.cat((seq, nxt), 1)
        sampled, run = sampled + 1, run + 1
    return seq


def policy_prompt(policy, T=10, B=2):
    prompt = torch.randint(8, 97, (B, T), generator=torch.Generator().manual_seed(3))
    if policy == "marked":
        prompt[:, [1, 4, 5]] = META  # the marked policy's prompt carries its meta ids
    if policy.startswith("every"):
        n = int(policy.split(":")[1])
        prompt = torch.tensor([insert_every(row, n, META) for row in prompt.tolist()])
    return prompt


@pytest.mark.parametrize("pos_encoding", ["ape", "rope"])
@pytest.mark.parametrize("policy", ["none", "marked", "every:3", "every:1"])
def test_cached_and_uncached_generation_equal_full_recomputation(pos_encoding, policy):
    model = toy_model(pos_encoding=pos_encoding)
    prompt = policy_prompt(policy)
    every = int(policy.split(":")[1]) if policy.startswith("every") else None
    ref = reference_generate(model, prompt, 14, every=every)
    for cache in (True, False):
        assert torch.equal(generate_ids(model, prompt, 14, policy=policy, temperature=0, use_cache=cache), ref)
    ref = reference_generate(model, prompt, 14, every=every, temperature=1.3, top_k=20, generator=torch.Generator().manual_seed(9))
    for cache in (True, False):
        got = generate_ids(model, prompt, 14, policy=policy, temperature=1.3, top_k=20, use_cache=cache,
                           generator=torch.Generator().manual_seed(9))
        assert torch.equal(got, ref)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_every_n_generation_keeps_meta_exactly_every_n_tokens(n):
    model = toy_model(pos_encoding="rope")
    prompt = policy_prompt(f"every:{n}", T=7, B=1)
    steps = list(stream_tokens(model, prompt, 11, policy=f"every:{n}", temperature=1.0, generator=torch.Generator().manual_seed(0)))
    assert sum(not inserted for _, inserted in steps) == 11  # max_new_tokens counts sampled tokens only
    seq = torch.cat([prompt, *(ids for ids, _ in steps)], 1)[0].tolist()
    assert [p for p, i in enumerate(seq) if i == META] == [p for p in range(len(seq)) if (p + 1) % (n + 1) == 0]
    assert all((ids.item() == META) == inserted for ids, inserted in steps)


def test_meta_token_is_never_sampled_under_any_policy():
    model = meta_favourite_model()
    for policy in ["none", "marked", "every:2"]:
        prompt = policy_prompt(policy, B=1)
        assert model(prompt)[0][0, -1].argmax() == META  # unconstrained, the model would emit <meta>
        for temperature in (0.0, 5.0):
            for ids, inserted in stream_tokens(model, prompt, 40, policy=policy, temperature=temperature,
                                               generator=torch.Generator().manual_seed(1)):
                assert (ids == META).all() == inserted


def test_bad_arguments_fail_before_anything_streams():
    model = toy_model(pos_encoding="ape")  # 64 learned positions
    prompt = torch.randint(8, 97, (1, 20))
    with pytest.raises(ValueError, match=r"inserted meta-tokens \(10\) exceed the 64"):
        next(stream_tokens(model, prompt, 40, policy="every:4"))  # inserted before samples 1, 5, ..., 37: 20 + 40 + 10 > 64
    assert len(generate_ids(model, prompt, 40, policy="none")[0]) == 60
    rows = torch.tensor([[10, 11, META, 12], [10, 11, 12, 13]])
    with pytest.raises(MetaPolicyError, match="same number of text tokens"):
        next(stream_tokens(model, rows, 3, policy="every:2"))
    plain = toy_model(meta_token_id=None)
    with pytest.raises(MetaPolicyError, match="meta_token_id"):
        next(stream_tokens(plain, prompt, 3, policy="marked"))


def test_stream_decoder_pieces_join_to_the_full_decode(small_tokenizer):
    text = "naïve café: € 5 — ünïcödé 😀 and words."  # characters the BPE splits into bytes
    ids = small_tokenizer.encode(text)
    assert len(ids) > len(text.encode("utf-8")) // 2
    decoder = StreamDecoder(small_tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    shown = StreamDecoder(small_tokenizer, show_meta=True)
    with_meta = insert_every(ids, 3, small_tokenizer.meta_token_id)
    assert "".join([shown.push(i) for i in with_meta] + [shown.flush()]) == small_tokenizer.decode(with_meta, skip_meta=False)


# ---------------------------------------------------------------- the `generate` command


class RecordingStdout(io.StringIO):
    """Records, for each write, how many forward passes the model had made by then."""

    def __init__(self, calls):
        super().__init__()
        self.calls, self.events = calls, []

    def write(self, s):
        self.events.append(("write", s, self.calls[0]))
        return super().write(s)

    def flush(self):
        self.events.append(("flush", "", self.calls[0]))


def run_cli(monkeypatch, argv):
    assert set([CMD]) <= set(cli.COMMAND_MODULES)  # registered in the real CLI
    calls = [0]
    real = GPT.hidden_states

    def counting(self, *a, **kw):
        calls[0] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(GPT, "hidden_states", counting)
    out = RecordingStdout(calls)
    monkeypatch.setattr("sys.stdout", out)
    code = cli.main(["generate", *argv])
    return code, out, calls[0]


def expected_text(checkpoint, small_tokenizer, prompt, n, policy, show_meta=False, **kw):
    from metatokens.runs.model_folder import load_pretrained

    model, tok, _ = load_pretrained(checkpoint)
    ids = torch.tensor([encode_prompt(tok, prompt, policy)])
    new = generate_ids(model.eval(), ids, n, policy=policy, vocab_limit=tok.vocab_size, **kw)[0, ids.size(1):].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_meta=not show_meta)


@pytest.mark.parametrize("policy,extra", [("none", []), ("every:2", ["--show-meta"]), ("marked", ["--no-cache"])])
def test_cli_streams_the_same_text_as_a_plain_decode(monkeypatch, checkpoint, small_tokenizer, policy, extra):
    prompt = f"the meta{META_TOKEN} token marks"
    argv = ["--checkpoint", str(checkpoint), "--prompt", prompt, "--max-new-tokens", "16", "--temperature", "0.9",
            "--top-k", "30", "--seed", "4", "--meta", policy, *extra]
    code, out, total_calls = run_cli(monkeypatch, argv)
    assert code == 0
    ref = expected_text(checkpoint, small_tokenizer, prompt, 16, policy, show_meta="--show-meta" in extra,
                        temperature=0.9, top_k=30, generator=torch.Generator().manual_seed(4))
    assert out.getvalue() == ref + "\n"
    if "--show-meta" in extra:
        assert ref.count(META_TOKEN) >= 16 // 2 - 1
    writes = [e for e in out.events if e[0] == "write" and e[1].strip()]
    assert len(writes) >= 2
    assert writes[0][2] < total_calls  # text appeared while the model was still generating
    assert out.events[-1][0] == "flush"
    for i, e in enumerate(out.events[:-1]):  # every write is flushed before the next model call
        if e[0] == "write":
            assert any(f[0] == "flush" and f[2] == e[2] for f in out.events[i + 1 :])


def test_cli_greedy_is_deterministic_without_seed(monkeypatch, checkpoint, small_tokenizer):
    argv = ["--checkpoint", str(checkpoint), "--prompt", "Numbers 123", "--max-new-tokens", "10", "--temperature", "0"]
    code, out, _ = run_cli(monkeypatch, argv)
    assert code == 0
    assert out.getvalue() == expected_text(checkpoint, small_tokenizer, "Numbers 123", 10, "none", temperature=0) + "\n"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--checkpoint", "{missing}", "--prompt", "x"], "neither a model folder nor a run folder"),
        (["--checkpoint", "{ckpt}", "--meta", "sometimes"], "unknown meta-token policy 'sometimes'"),
        (["--checkpoint", "{ckpt}", "--meta", "every:0"], "unknown meta-token policy 'every:0'"),
        (["--checkpoint", "{ckpt}", "--max-new-tokens", "-3"], "--max-new-tokens must be >= 0"),
        (["--checkpoint", "{ckpt}", "--max-new-tokens", "500"], "learned positions"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, checkpoint, argv, needle):
    argv = [a.format(missing=tmp_path / "nowhere", ckpt=checkpoint) for a in argv]
    assert set([CMD]) <= set(cli.COMMAND_MODULES)  # registered in the real CLI
    assert cli.main(["generate", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metatokens generate: error:") and needle in lines[0], captured.err


# ---------------------------------------------------------------- performance paths of the model


def test_sparse_equals_dense_when_every_row_has_the_same_meta_count():
    """Training rows all carry round(k*T) meta-tokens: the sparse path then skips padding."""
    sparse = toy_model(pos_encoding="rope")
    dense = copy.deepcopy(sparse)
    for block in dense.h:
        block.meta_attn.impl = "dense"
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(8, 97, (4, 40), generator=g)
    for row in idx:
        row[torch.randperm(40, generator=g)[:6]] = META
    targets = torch.roll(idx, -1, 1)
    (out_s, loss_s), (out_d, loss_d) = sparse(idx, targets), dense(idx, targets)
    assert (out_s - out_d).abs().max() <= 1e-5
    loss_s.backward()
    loss_d.backward()
    for (name, p_s), p_d in zip(sparse.named_parameters(), dense.parameters()):
        assert (p_s.grad - p_d.grad).abs().max() <= 1e-5, name
    assert sparse.h[1].meta_attn.c_attn.weight.grad.abs().sum() > 0


def test_kv_cache_growing_past_its_capacity_equals_full_forward():
    model = toy_model(pos_encoding="rope")  # RoPE: no position limit, so the cache must grow several times
    idx = mixed_batch(T=150)[:3]
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache.empty(model.config.n_layer)
        steps = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t : t + 1], cache=cache)[0] for t in range(5, 150)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-4
    assert cache.layers[0].k.shape == (3, model.config.n_head, 150, model.config.head_dim)


def test_cache_rows_can_be_replaced_as_beam_search_does():
    model = toy_model(pos_encoding="rope")
    idx = mixed_batch(T=12)[:3]
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        cache = KVCache.empty(model.config.n_layer)
        model(idx[:, :8], cache=cache)
        cache.select_rows(order)  # what hf_model.MetaCache.reorder_cache calls
        got, _ = model(idx[order, 8:], cache=cache)
        ref, _ = model(idx[order])
    assert (got - ref[:, 8:]).abs().max() <= 1e-5


@pytest.mark.parametrize("use_cache", [False, True])
def test_bf16_autocast_runs_and_stays_close_to_fp32(use_cache):
    """Mixed precision: the meta rows come back in bf16 while the residual stream stays fp32."""
    model = toy_model(pos_encoding="rope").train()
    idx = mixed_batch()
    targets = torch.roll(idx, -1, 1)
    ref, _ = model(idx, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if use_cache:
            with torch.no_grad():
                cache = KVCache.empty(model.config.n_layer)
                got = torch.cat([model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 13), (13, 14), (14, 24)]], 1)
        else:
            got, loss = model(idx, targets)
            loss.backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert (got.float() - ref).abs().max() <= 0.05


def test_cli_accepts_a_run_folder(monkeypatch, tmp_path, checkpoint, small_tokenizer):
    """A run folder resolves to its latest checkpoint, as for finetune/evaluate/analyze."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "checkpoints" / "step-00000007")
    (run / "checkpoints" / "LATEST").write_text("step-00000007\n")
    argv = ["--max-new-tokens", "8", "--temperature", "0", "--prompt", "Numbers 123"]
    code, from_run, _ = run_cli(monkeypatch, ["--checkpoint", str(run), *argv])
    assert code == 0
    assert "".join(e[1] for e in from_run.events if e[0] == "write") == (
        expected_text(checkpoint, small_tokenizer, "Numbers 123", 8, "none", temperature=0) + "\n"
    )


# ---------------------------------------------------------------- bf16 decoding


def test_bf16_decoding_on_a_cpu_without_bf16_units_stays_fp32(monkeypatch, capsys):
    from metatokens import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    model = toy_model()
    ctx = decoding_precision(model, "bf16", "cpu")
    assert model.lm_head.weight.dtype == torch.float32
    assert "no bf16 units" in capsys.readouterr().err  # stderr: stdout is the generated text
    with ctx():
        assert model(mixed_batch())[0].dtype == torch.float32
    with pytest.raises(ValueError, match="fp32 or bf16"):
        decoding_precision(model, "fp16", "cpu")
