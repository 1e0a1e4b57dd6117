"""`metatokens plot` and the report's figure helpers: legends tell runs apart, seeds are averaged."""

import contextlib
import io
import json

import pytest

from metatokens import cli
from metatokens.commands.plot import run_labels
from metatokens.report import _mean_over_seeds


def write_run(folder, losses):
    folder.mkdir(parents=True)
    rows = [{"step": s, "train_loss": v} for s, v in losses] + [{"step": losses[-1][0], "val_loss": losses[-1][1]}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_run_labels_are_the_shortest_distinct_path_endings(tmp_path):
    runs = [tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "b" / "other"]
    assert run_labels(runs) == ["a/run", "b/run", "b/other"]
    assert run_labels([tmp_path / "x", tmp_path / "y"]) == ["x", "y"]


def test_plot_cli_writes_a_png_with_names_and_refuses_a_wrong_count(tmp_path):
    for name in ("a", "b"):
        write_run(tmp_path / name / "run", [(1, 5.0), (2, 4.0)])
    runs = [str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")]
    png = tmp_path / "loss.png"
    assert cli.main(["plot", *runs, "--out", str(png), "--names", "first,second"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["plot", *runs, "--out", str(tmp_path / "bad.png"), "--names", "only-one"])
    assert code != 0 and "--names has 1 names for 2 runs" in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1 and not (tmp_path / "bad.png").exists()


def test_mean_over_seeds_gives_mean_and_one_standard_deviation():
    def model(em, tok):
        return {"name": "m", "results": [{"length": 8, "exact_match": em, "token_accuracy": tok,
                                          "exact_match_ci95": [0, 1], "token_accuracy_ci95": [0, 1]}]}

    merged = _mean_over_seeds([[model(0.2, 0.6)], [model(0.4, 1.0)]])
    row = merged[0]["results"][0]
    sd_em, sd_tok = (0.2 ** 2 / 2) ** 0.5, (0.4 ** 2 / 2) ** 0.5  # sample sd of two values a, b: |a - b| / sqrt(2)
    assert row["exact_match"] == pytest.approx(0.3) and row["token_accuracy"] == pytest.approx(0.8)
    assert row["exact_match_ci95"] == pytest.approx([0.3 - sd_em, 0.3 + sd_em])
    assert row["token_accuracy_ci95"] == pytest.approx([0.8 - sd_tok, 1.0])  # clipped at 100%


def test_mean_over_seeds_matches_by_name_and_length_and_marks_single_seed_points():
    def row(length, em, skipped=False):
        r = {"length": length, "exact_match": None if skipped else em, "token_accuracy": None if skipped else em,
             "exact_match_ci95": [0.0, 1.0], "token_accuracy_ci95": [0.0, 1.0]}
        return {**r, "skipped": "too long"} if skipped else r

    seed0 = [{"name": "a", "results": [row(8, 0.2), row(16, 0, skipped=True)]},
             {"name": "b", "results": [row(8, 0.6)]}]
    seed1 = [{"name": "b", "results": [row(8, 0.8)]},  # other order, and "a" missing: must not mix a with b
             {"name": "a", "results": [row(16, 0.5)]}]
    merged = {m["name"]: {r["length"]: r for r in m["results"]} for m in _mean_over_seeds([seed0, seed1])}
    assert merged["b"][8]["exact_match"] == pytest.approx(0.7)
    assert merged["a"][8]["exact_match"] == pytest.approx(0.2) and merged["a"][8]["single_seed"]
    assert merged["a"][16]["exact_match"] == pytest.approx(0.5) and not merged["a"][16].get("skipped")
    assert merged["a"][16]["exact_match_ci95"] == [0.0, 1.0]  # its own interval, not a zero-width bar


def test_run_labels_edge_cases(tmp_path):
    same = tmp_path / "x" / "run"
    labels = run_labels([same, same])
    assert labels[0] == labels[1] == str(same.resolve()) and "//" not in labels[0]
    assert run_labels([]) == []
