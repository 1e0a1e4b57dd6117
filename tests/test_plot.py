"""`metatokens plot` and the report's figure helpers: legends tell runs apart, seeds are averaged."""

import contextlib
import io
import json


from metatokens import cli
from metatokens.commands.plot import run_labels


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


def test_run_labels_edge_cases(tmp_path):
    same = tmp_path / "x" / "run"
    labels = run_labels([same, same])
    assert labels[0] == labels[1] == str(same.resolve()) and "//" not in labels[0]
    assert run_labels([]) == []
