"""`metatokens tasks lm-eval`: the task folder for lm-evaluation-harness holds the prompts `metatokens
evaluate` scores, written so that the exported tokenizer reads them back to the same ids. The harness
itself runs in tests/integration/test_lm_eval_harness.py."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import export_model, quiet_main, run_cli, snapshot, task_model
from transformers import PreTrainedTokenizerFast

from metatokens.tasks import make_examples
from metatokens.tokenizer import EOS_TOKEN, META_TOKEN

N = 6
LENGTHS = (64, 96)
TASKS = ("list_recall", "parity")


@pytest.fixture(scope="module")
def toy_export(task_tokenizer, tmp_path_factory) -> Path:
    """A random 2-layer meta-token model on task_tokenizer, exported for transformers."""
    return export_model(task_model(task_tokenizer, block_size=256), task_tokenizer, tmp_path_factory.mktemp("pack"), "hf")


def write_pack(export: Path, out: Path, *extra: str) -> dict:
    quiet_main(["tasks", "lm-eval", "--checkpoint", str(export), "--out", str(out), "--task", ",".join(TASKS),
                "--lengths", ",".join(map(str, LENGTHS)), "--n", str(N), *extra])
    return json.loads((out / "metatokens_lm_eval.json").read_text())


def task_config(pack: Path, name: str) -> tuple[dict, list[dict]]:
    config = yaml.safe_load((pack / f"{name}.yaml").read_text())
    data = Path(config["dataset_kwargs"]["data_files"]["test"])
    return config, [json.loads(line) for line in data.read_text().splitlines()]


def test_the_pack_holds_evaluates_test_prompts_with_the_meta_token_the_exported_tokenizer_reads(
        toy_export, task_tokenizer, tmp_path):
    """One generate_until task per task and length; each prompt, read by the exported tokenizer, is
    the prompt evaluate scores (meta id included) and its answer is evaluate's; the prompts' digest is
    the one evaluate reports."""
    marker = write_pack(toy_export, tmp_path / "pack")
    hf_tok = PreTrainedTokenizerFast.from_pretrained(toy_export)
    assert [e["name"] for e in marker["tasks"]] == [f"metatokens_{t}_{n}" for t in TASKS for n in LENGTHS]
    for task in TASKS:
        quiet_main(["evaluate", "--checkpoint", str(toy_export), "--task", task, "--lengths", "64,96", "--n", str(N),
                    "--out", str(tmp_path / task), "--no-progress"])
        report = json.loads((tmp_path / task / f"{task}.json").read_text())
        for row in report["models"][0]["results"]:
            config, docs = task_config(tmp_path / "pack", f"metatokens_{task}_{row['length']}")
            examples = make_examples(task, task_tokenizer, length=row["length"], n=N, seed=0, split="test", meta=True)
            assert config["metadata"]["prompts_sha256"] == row["prompts_sha256"]
            assert config["output_type"] == "generate_until" and config["test_split"] == "test"
            assert (config["doc_to_text"], config["doc_to_target"]) == ("{{prompt}}", "{{answer}}")
            assert config["metric_list"] == [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]
            assert config["generation_kwargs"] == {"until": [EOS_TOKEN], "do_sample": False,
                                                   "max_gen_toks": max(len(e.answer_ids) for e in examples)}
            assert {"metatokens", f"metatokens_{task}"} <= set(config["tag"])
            assert len(docs) == N
            for doc, example in zip(docs, examples):
                assert doc["answer"] == example.answer_text
                assert doc["prompt"].count(META_TOKEN) == len(example.meta_positions) >= 1
                assert hf_tok(doc["prompt"], add_special_tokens=False)["input_ids"] == example.prompt_ids


def test_meta_off_writes_the_same_prompts_without_the_marker(toy_export, task_tokenizer, tmp_path):
    marker = write_pack(toy_export, tmp_path / "pack", "--meta", "off")
    hf_tok = PreTrainedTokenizerFast.from_pretrained(toy_export)
    assert marker["meta"] is False and all(e["name"].endswith("_nometa") for e in marker["tasks"])
    _, docs = task_config(tmp_path / "pack", "metatokens_parity_64_nometa")
    examples = make_examples("parity", task_tokenizer, length=64, n=N, seed=0, split="test", meta=False)
    assert [d["prompt"] for d in docs] == [e.prompt_text for e in examples]
    assert [hf_tok(d["prompt"], add_special_tokens=False)["input_ids"] for d in docs] == [e.prompt_ids for e in examples]


def test_all_tasks_leave_out_a_length_a_task_cannot_fit_and_a_named_task_is_refused(toy_export, tmp_path):
    quiet_main(["tasks", "lm-eval", "--checkpoint", str(toy_export), "--out", str(tmp_path / "all"), "--lengths", "64",
                "--n", "2"])
    marker = json.loads((tmp_path / "all" / "metatokens_lm_eval.json").read_text())
    assert "copying" in {s["task"] for s in marker["skipped"]}  # its smallest prompts need about 90 tokens here
    assert {"metatokens_list_recall_64", "metatokens_parity_64"} <= {e["name"] for e in marker["tasks"]}
    assert "Left out: copying at 64" in (tmp_path / "all" / "README.md").read_text()
    code, err = run_cli("tasks", "lm-eval", "--checkpoint", str(toy_export), "--out", str(tmp_path / "one"),
                        "--task", "parity,copying", "--lengths", "64")
    assert code == 2 and "too short for copying" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "one").exists()


def test_the_folder_is_replaced_only_when_it_is_an_earlier_pack(toy_export, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    before = snapshot(mine)
    args = ["tasks", "lm-eval", "--checkpoint", str(toy_export), "--task", "parity", "--lengths", "64", "--n", "2"]
    code, err = run_cli(*args, "--out", str(mine), "--overwrite")
    assert code == 2 and "is not the output of an earlier `metatokens tasks lm-eval`" in err
    assert snapshot(mine) == before
    pack = tmp_path / "pack"
    assert run_cli(*args, "--out", str(pack))[0] == 0
    code, err = run_cli(*args, "--out", str(pack))
    assert code == 2 and "pass --overwrite" in err
    assert run_cli(*args, "--out", str(pack), "--overwrite", "--seed", "1")[0] == 0
    assert yaml.safe_load((pack / "metatokens_parity_64.yaml").read_text())["metadata"]["seed"] == 1
    (pack / "data" / "mine.jsonl").write_text("{}\n")  # a file the pack did not write: never replaced
    before = snapshot(pack)
    code, err = run_cli(*args, "--out", str(pack), "--overwrite")
    assert code == 2 and "is not the output of an earlier" in err and snapshot(pack) == before
    code, err = run_cli(*args, "--out", str(toy_export), "--overwrite")
    assert code == 2 and "is or holds the source" in err


@pytest.mark.parametrize("flags, message", [
    (["--task", "sorting"], "unknown task 'sorting'"),
    (["--lengths", "4"], "lengths must be integers >= 8"),
    (["--lengths", "64,x"], "--lengths must be comma-separated integers"),
    (["--n", "0"], "n must be a positive integer"),
    (["--difficulty", "easy"], "unknown difficulty 'easy'"),
])
def test_bad_input_is_one_line(toy_export, tmp_path, flags, message):
    code, err = run_cli("tasks", "lm-eval", "--checkpoint", str(toy_export), "--out", str(tmp_path / "p"), *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "no task fits" not in err  # bad input is said as such, not as lengths the tasks cannot fit
    assert not (tmp_path / "p").exists()


def test_a_prompt_the_tokenizer_does_not_read_back_is_refused_and_nothing_is_written(toy_export, tmp_path, monkeypatch):
    """The writer's own check: a marker written with a space before it would change the prompt's ids."""
    from metatokens.evaluation import harness

    real = harness.marked_prompt
    monkeypatch.setattr(harness, "marked_prompt", lambda e, tok: real(e, tok).replace(META_TOKEN, " " + META_TOKEN))
    code, err = run_cli("tasks", "lm-eval", "--checkpoint", str(toy_export), "--out", str(tmp_path / "p"),
                        "--task", "parity", "--lengths", "64", "--n", "2")
    assert code == 2 and "does not tokenize back to its ids" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_beyond_the_models_window_the_command_says_max_length_and_a_learned_position_table_is_refused(
        task_tokenizer, tmp_path):
    """The harness cuts a prompt longer than config's window from the left: a RoPE model (window 64)
    read at 96 gets max_length in its lm_eval line; an APE model with 64 positions is refused, as by evaluate."""
    rope = export_model(task_model(task_tokenizer), task_tokenizer, tmp_path, "rope")
    args = ["tasks", "lm-eval", "--task", "parity", "--lengths", "64,96", "--n", "4"]
    quiet_main([*args, "--checkpoint", str(rope), "--out", str(tmp_path / "pack")])
    marker = json.loads((tmp_path / "pack" / "metatokens_lm_eval.json").read_text())
    need = max(e["positions"] for e in marker["tasks"])
    assert marker["model_window"] == 64 < need == marker["max_length"]
    assert f"trust_remote_code=True,max_length={need} " in (tmp_path / "pack" / "README.md").read_text()
    ape = export_model(task_model(task_tokenizer, pos_encoding="ape"), task_tokenizer, tmp_path, "ape")
    code, err = run_cli(*args, "--checkpoint", str(ape), "--out", str(tmp_path / "ape-pack"))
    assert code == 2 and "64 learned positions) cannot read length 96" in err
    assert not (tmp_path / "ape-pack").exists()
