"""`metatokens plot` and the report's figure helpers: legends tell runs apart, seeds are averaged."""

import contextlib
import io
import json

import pytest

from conftest import capture_figures
from metatokens import cli
from metatokens.cli.plot import run_labels


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


def test_the_loss_plot_title_names_the_runs_and_what_they_trained_on(tmp_path, monkeypatch):
    import metatokens.cli.plot as plot

    for name in ("a", "b"):
        write_run(tmp_path / name / "run", [(1, 5.0), (2, 4.0)])
        (tmp_path / name / "run" / "run.json").write_text(json.dumps({"finetune": {"tasks": ["parity", "copying"]}}))
    figures = capture_figures(monkeypatch, plot)
    plot.plot_runs([tmp_path / "a" / "run", tmp_path / "b" / "run"], tmp_path / "loss.png")
    title = figures[0].axes[0].get_title()
    assert "a/run" in title and "b/run" in title and "fine-tuning on parity, copying" in title


def test_the_title_explains_only_the_marks_the_figure_has(tmp_path, monkeypatch):
    """A metric logged at validation only (exact_match) has dots and no lines: the title must not
    promise training lines; a loss with both keeps the two-part key."""
    import metatokens.cli.plot as plot

    write_run(tmp_path / "both", [(1, 5.0), (2, 4.0)])
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "val_exact_match": v}) + "\n" for s, v in [(10, 0.1), (20, 0.5)]))
    figures = capture_figures(monkeypatch, plot)
    plot.plot_runs([tmp_path / "val"], tmp_path / "em.png", metric="exact_match")
    plot.plot_runs([tmp_path / "both"], tmp_path / "loss.png")
    val_title, both_title = (f.axes[0].get_title() for f in figures)
    assert "(validation)" in val_title and "training" not in val_title
    assert "(lines: training, dots: validation)" in both_title


def test_report_differences_clip_at_100_points_and_name_the_tasks(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import metatokens.study.figures as report

    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path, **kw: figures.append(fig) or path)
    res = SimpleNamespace(scale=SimpleNamespace(ft_len=120), out=tmp_path)
    rows = [("Copying: Meta+RoPE vs GPT-2 (APE)", {"diff": 0.5, "ci95": [-0.1, 1.4]}),
            ("List Recall: Meta+RoPE vs GPT-2 (APE)", {"diff": -0.1, "ci95": [-1.9, 0.3]})]
    report.differences_figure(res, rows)
    ax = figures[0].axes[0]
    assert "List Recall" in ax.get_title() and "Copying" in ax.get_title() and "L = 120" in ax.get_title()
    assert ax.get_xlim()[0] >= -110 and ax.get_xlim()[1] <= 110  # not stretched to ±190
    arrows = [line for line in ax.get_lines() if line.get_marker() in ("<", ">")]
    assert sorted(float(line.get_xdata()[0]) for line in arrows) == [-100.0, 100.0]


def test_report_accuracy_baselines_follow_each_length(monkeypatch):
    from types import SimpleNamespace

    import metatokens.study.figures as report
    from metatokens.plotting import pyplot

    baselines = {"parity": {"120": {"majority": 0.55, "chance": 0.5}, "240": {"majority": 0.6, "chance": 0.5}}}
    res = SimpleNamespace(seed_list=[0], seeds={0: {"evaluate-x": SimpleNamespace(result={"baselines": baselines})}})
    fig, ax = pyplot().subplots()
    report._baseline_lines(ax, res, "parity", {"120": 1, "240": 2, "480+yarn": 4})
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["majority answer"].get_ydata()) == pytest.approx([55.0, 60.0]) and list(lines["chance"].get_xdata()) == [1, 2]
    pyplot().close(fig)
