"""Progress output of a real pre-training and its resume: plain lines (no carriage returns) when
stderr is not a terminal, and a resume says where it starts. The progress classes themselves are
tested in tests/unit/test_progress.py."""

from __future__ import annotations

import random

from metatokens import cli


def test_a_resumed_run_announces_the_step_it_continues_from_and_writes_no_carriage_returns(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    words = "meta token model text attention layer memory window list item count the a of and".split()
    for i in range(12):
        (corpus / f"d{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(400)))
    base = ["pretrain", "--config", "toy", "--out", str(tmp_path / "run"), "--set", f"data.source={corpus}",
            "--set", f"data.cache_dir={tmp_path / 'c'}", "--set", "data.vocab_size=300", "--set", "train.batch_size=2",
            "--set", "train.eval_batches=1", "--set", "train.ckpt_interval=2"]
    assert cli.main([*base, "--max-steps", "2"]) == 0  # progress on: stderr is not a terminal under pytest
    first = capsys.readouterr()
    assert cli.main(["pretrain", "--out", str(tmp_path / "run"), "--resume", "--max-steps", "4"]) == 0
    second = capsys.readouterr()
    assert f"{tmp_path / 'run'}: resuming from step 2 of 4\n" in second.out
    assert "resuming" not in first.out
    for captured in (first, second):
        assert "\r" not in captured.err and "\r" not in captured.out
    assert "run: 4/4 step (100%)" in second.err
