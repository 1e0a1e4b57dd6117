"""The command line itself: usage on unknown flags, and `metatokens info`'s numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from metatokens import cli

STUDY = Path(__file__).resolve().parents[2] / "docs" / "results" / "exploratory_tiny_lr3e-3" / "stages" / "seed0"


@pytest.mark.parametrize("argv,command", [
    (["pretrain", "--out", "x", "--bogus"], "pretrain"),
    (["finetune", "--out", "x", "--steps", "3", "--bogus", "1"], "finetune"),
    (["evaluate", "--checkpoint", "x", "--task", "parity", "--bogus"], "evaluate"),
    (["analyze", "ablate", "--checkpoint", "x", "--bogus"], "analyze ablate"),
    (["--bogus"], None),
])
def test_an_unknown_flag_shows_the_usage_of_the_command_it_was_given_to(tmp_path, monkeypatch, capsys, argv, command):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    prog = "metatokens" if command is None else f"metatokens {command}"
    assert err.startswith(f"usage: {prog} "), err  # that command's usage, which lists its flags
    extra = " ".join(argv[argv.index("--bogus"):])
    assert err.strip().splitlines()[-1] == f"{prog}: error: unrecognized arguments: {extra}"
    assert list(tmp_path.iterdir()) == []


def test_known_flags_still_parse_after_the_command():
    args = cli.parse_args(cli.build_parser(), ["analyze", "ablate", "--checkpoint", "x", "--lengths", "128,256"])
    assert (args.command, args.analysis, args.checkpoint, args.lengths) == ("analyze", "ablate", "x", [128, 256])


def test_info_counts_each_preset_as_pretraining_built_it(capsys):
    """The preset rows against the parameter counts real `metatokens pretrain` runs recorded
    (the committed tiny study's stages), not against the same formula."""
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    rows = {m.group(1): int(m.group(2).replace(",", "")) for m in re.finditer(r"^(\S+)\s+.*?\s([\d,]{5,})$", out, re.M)}
    for stage, preset in [("pretrain-meta-rope", "tiny"), ("pretrain-meta-ape", "tiny-ape"), ("pretrain-gpt2", "tiny-baseline")]:
        recorded = json.loads((STUDY / stage / "stage.json").read_text())
        assert f"--config {preset} " in recorded["command"]
        assert rows[preset] == recorded["result"]["params"], (preset, out)


def _model_folder(folder: Path) -> Path:
    import torch

    from metatokens.runs.model_folder import save_pretrained
    from metatokens.model import GPT, ModelConfig
    from metatokens.tasks import make_examples
    from metatokens.tokenizer import MetaTokenizer

    bytes_only = MetaTokenizer.train(["ab"], 258)
    texts = [e.prompt_text + e.answer_text for e in make_examples("parity", bytes_only, length=200, n=20, seed=0)]
    tok = MetaTokenizer.train(texts, 400)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=256, pos_encoding="rope",
                      meta_token_id=tok.meta_token_id)
    save_pretrained(folder, GPT(cfg), tok)
    return folder


def test_outputs_default_to_the_run_the_model_belongs_to_not_the_working_directory(tmp_path, monkeypatch, capsys):
    from metatokens.cli.common import beside_model

    run = tmp_path / "run"
    step = _model_folder(run / "checkpoints" / "step-00000002")
    (run / "checkpoints" / "LATEST").write_text("step-00000002\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert beside_model(step, "eval") == run / "eval" == beside_model(run, "eval")
    assert beside_model("gpt2", "eval") == Path("eval")  # a hub name: the working directory
    assert cli.main(["evaluate", "--checkpoint", str(step), "--task", "parity", "--lengths", "96", "--n", "2",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (run / "eval" / "parity.json").is_file() and not out.endswith("\n\n")
    assert cli.main(["analyze", "ablate", "--checkpoint", str(run), "--task", "parity", "--lengths", "96", "--n", "2",
                     "--no-progress"]) == 0
    assert any((run / "analysis").iterdir())
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "train_loss": 5.0 - i / 10}) + "\n" for i in range(1, 4)))
    assert cli.main(["plot", str(run)]) == 0
    assert (run / "loss.png").is_file()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "val_exact_match/copying": i / 10}) + "\n"
                                               for i in range(1, 4)))
    assert cli.main(["plot", str(run), "--metric", "exact_match/copying"]) == 0
    assert (run / "exact_match-copying.png").is_file() and not (run / "exact_match").exists()
    assert list(work.iterdir()) == []  # nothing landed in the working directory
