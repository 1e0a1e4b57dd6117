"""The command line itself: usage on unknown flags, and `metatokens info`'s numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from metatokens import cli

STUDY = Path(__file__).resolve().parents[1] / "docs" / "results" / "reproduce_tiny" / "stages" / "seed0"


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
