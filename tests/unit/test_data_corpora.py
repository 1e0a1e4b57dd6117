"""Corpus sources: the built-in stdlib prose, local txt/jsonl/parquet files and folders, hf:NAME."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest

from metatokens.data import corpora
from metatokens.errors import DataError
from metatokens.data.corpora import builtin_documents, corpus_fingerprint, iter_documents


def docs(source, **options) -> list[str]:
    return list(iter_documents(str(source), **options))


def assert_one_line_naming(exc_info, *names: str) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message
    return message


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# builtin


def test_builtin_corpus_is_english_prose_of_expected_size():
    documents = list(builtin_documents())
    total = sum(len(d.encode("utf-8")) for d in documents)
    assert 1_000_000 < total < 3_000_000
    assert len(documents) > 200
    assert len(set(documents)) == len(documents)
    assert all(d.strip() for d in documents)
    text = "\n".join(documents)
    # Prose, not code: mostly letters and spaces, and the commonest English words are frequent.
    assert sum(c.isalpha() or c.isspace() for c in text) / len(text) > 0.8
    words = text.lower().split()
    for common in ("the", "a", "of", "is", "to", "and"):
        assert words.count(common) > 1000, common
    # Both halves are there: module docstrings and the language-reference topics.
    assert any("Abstract Base Classes" in d for d in documents)
    assert any(d.startswith("The ") and "statement" in d for d in documents)


def test_builtin_corpus_is_deterministic_and_fast():
    first = list(builtin_documents())
    fingerprint = corpus_fingerprint("builtin")
    corpora._builtin_corpus.cache_clear()
    start = time.perf_counter()
    second = list(builtin_documents())
    assert time.perf_counter() - start < 10
    assert first == second
    assert corpus_fingerprint("builtin") == fingerprint  # from the re-extracted corpus


def test_builtin_max_documents():
    assert docs("builtin", max_documents=3) == list(builtin_documents())[:3]
    with pytest.raises(DataError):
        docs("builtin", max_documents=0)


# ---------------------------------------------------------------------------------------------
# local files


def test_txt_file_is_one_document(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("line one\nline two\n", encoding="utf-8")
    assert docs(path) == ["line one\nline two\n"]


def test_folder_is_read_recursively_in_sorted_order(tmp_path, caplog):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "2.txt").write_text("b2", encoding="utf-8")
    (tmp_path / "b" / "1.txt").write_text("b1", encoding="utf-8")
    write_jsonl(tmp_path / "a" / "x.jsonl", [{"text": "ax1"}, {"text": "ax2"}])
    (tmp_path / "c.txt").write_text("c", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("git", encoding="utf-8")
    (tmp_path / "README.md").write_text("not data", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="metatokens.data.corpora"):
        assert docs(tmp_path) == ["ax1", "ax2", "b1", "b2", "c"]
    assert "README.md" in caplog.text


def test_jsonl_text_field_and_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "t1", "body": "b1"}\n\n{"text": "t2", "body": "b2"}\n{"text": "", "body": null}\n')
    assert docs(path) == ["t1", "t2"]
    assert docs(path, text_field="body") == ["b1", "b2"]
    assert docs(path, max_documents=1) == ["t1"]


def test_parquet_column_selection_and_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"document {i}" for i in range(2500)]  # more than one read batch
    table = pa.table({"text": texts, "other": [f"o{i}" for i in range(2500)]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=700)
    assert docs(tmp_path / "d.parquet") == texts
    assert docs(tmp_path / "d.parquet", text_field="other")[:2] == ["o0", "o1"]
    with pytest.raises(DataError) as exc_info:
        docs(tmp_path / "d.parquet", text_field="content")
    assert_one_line_naming(exc_info, "d.parquet", "'content'", "text_field")


def test_parquet_nulls_are_skipped(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", None, "b"]}), tmp_path / "n.parquet")
    assert docs(tmp_path / "n.parquet") == ["a", "b"]


def test_missing_path(tmp_path):
    with pytest.raises(DataError) as exc_info:
        docs(tmp_path / "nope.txt")
    assert_one_line_naming(exc_info, "nope.txt", "does not exist")
    assert isinstance(exc_info.value, ValueError)


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataError) as exc_info:
        docs(path)
    assert_one_line_naming(exc_info, "data.csv", ".txt")


@pytest.mark.parametrize("kind", ["empty-folder", "only-readme", "blank-txt", "empty-jsonl-texts"])
def test_empty_corpus(tmp_path, kind):
    if kind == "only-readme":
        (tmp_path / "README.md").write_text("hi")
    elif kind == "blank-txt":
        (tmp_path / "a.txt").write_text("  \n\n")
    elif kind == "empty-jsonl-texts":
        write_jsonl(tmp_path / "a.jsonl", [{"text": ""}, {"text": "   "}])
    with pytest.raises(DataError) as exc_info:
        docs(tmp_path)
    assert_one_line_naming(exc_info, str(tmp_path))


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "also ok"}\n{"text": oops}\n')
    iterator = iter_documents(str(path))
    assert next(iterator) == "ok"
    with pytest.raises(DataError) as exc_info:
        list(iterator)
    assert_one_line_naming(exc_info, f"{path}:3", "JSON")


def test_jsonl_missing_field_names_file_line_and_fields(tmp_path):
    path = tmp_path / "f.jsonl"
    write_jsonl(path, [{"text": "ok"}, {"content": "x", "id": 3}])
    with pytest.raises(DataError) as exc_info:
        docs(path)
    assert_one_line_naming(exc_info, f"{path}:2", "'text'", "content", "text_field")


def test_jsonl_non_object_and_non_string(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError) as exc_info:
        docs(path)
    assert_one_line_naming(exc_info, f"{path}:1", "object")
    write_jsonl(path, [{"text": 5}])
    with pytest.raises(DataError) as exc_info:
        docs(path)
    assert_one_line_naming(exc_info, f"{path}:1", "int")


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, caplog):
    (tmp_path / "a.txt").write_bytes(b"good \xff\xfe text")
    (tmp_path / "b.txt").write_bytes(b"fine text")
    (tmp_path / "c.txt").write_bytes(b"\xc3(bad")
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "ok \xff"}\n{"text": "clean"}\n{"text": "x \xfe"}\n')
    with caplog.at_level(logging.WARNING, logger="metatokens.data.corpora"):
        result = docs(tmp_path)
    assert result == ["good \ufffd\ufffd text", "fine text", "\ufffd(bad", "ok \ufffd", "clean", "x \ufffd"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once for the run of .txt files, once for the .jsonl file
    assert any("2 .txt document(s)" in w and "a.txt" in w for w in warnings)
    assert any("d.jsonl" in w and "2 line(s)" in w for w in warnings)


def test_json_lone_surrogates_are_replaced(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "a\\ud800b"}\n')
    (text,) = docs(path)
    text.encode("utf-8")  # must not raise: tokenizers only accept valid Unicode


def test_bom_is_dropped(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert docs(tmp_path / "a.txt") == ["hello"]


def test_fingerprint_tracks_files_and_options(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"text": "one"}])
    first = corpus_fingerprint(str(path))
    assert corpus_fingerprint(str(path)) == first
    assert corpus_fingerprint(str(path), text_field="body") != first
    assert corpus_fingerprint(str(path), max_documents=5) != first
    write_jsonl(path, [{"text": "one"}, {"text": "two"}])
    assert corpus_fingerprint(str(path)) != first
    assert corpus_fingerprint("hf:some/name") != corpus_fingerprint("hf:some/name", hf_config="x")
    assert corpus_fingerprint("hf:some/name", split="validation") != corpus_fingerprint("hf:some/name")
    with pytest.raises(DataError):
        corpus_fingerprint(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------
# Hugging Face


def test_hf_source_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(DataError) as exc_info:
        docs("hf:anything")
    assert_one_line_naming(exc_info, "hf:anything", "pip install datasets")


def test_hf_local_json_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets  # noqa: F401  (a declared test dependency: missing, the test fails)

    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"text": "alpha", "body": "A"}, {"text": "beta", "body": "B"}])
    assert docs(f"hf:{folder}") == ["alpha", "beta"]
    assert docs(f"hf:{folder}", text_field="body") == ["A", "B"]
    with pytest.raises(DataError) as exc_info:
        docs(f"hf:{folder}", text_field="missing")
    assert_one_line_naming(exc_info, f"hf:{folder}", "'missing'", "text_field")


def test_hf_saved_to_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    saved = tmp_path / "saved"
    dataset_dict = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"content": ["x y", "z"]}),
            "test": datasets.Dataset.from_dict({"content": ["held out"]}),
        }
    )
    dataset_dict.save_to_disk(str(saved))
    assert docs(f"hf:{saved}", text_field="content") == ["x y", "z"]
    assert docs(f"hf:{saved}", text_field="content", split="test") == ["held out"]
    with pytest.raises(DataError) as exc_info:
        docs(f"hf:{saved}", text_field="content", split="validation")
    assert_one_line_naming(exc_info, "validation", "split")


def test_hf_unloadable_dataset_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets  # noqa: F401  (a declared test dependency: missing, the test fails)

    missing = tmp_path / "no-such-dataset"
    with pytest.raises(DataError) as exc_info:
        docs(f"hf:{missing}")
    assert_one_line_naming(exc_info, f"hf:{missing}", "cannot load")


def test_builtin_falls_back_to_this_process(monkeypatch, caplog):
    monkeypatch.setattr(corpora.sys, "executable", "/nonexistent/python")
    corpora._builtin_corpus.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="metatokens.data.corpora"):
            documents = list(builtin_documents())
        assert "extracting in this process" in caplog.text
        assert 1_000_000 < sum(len(d) for d in documents) < 3_000_000
    finally:
        corpora._builtin_corpus.cache_clear()  # later tests get the isolated extraction again


def test_an_unreachable_hub_dataset_is_one_error_without_the_clients_retry_lines(monkeypatch, capsys):
    """huggingface_hub logs each retry of each request as a warning (11 lines offline); the load is
    faked here (no network): it logs like the hub client, then fails like it."""
    import datasets

    def load_dataset(*args, **kwargs):
        for attempt in range(1, 6):
            logging.getLogger("huggingface_hub.utils._http").warning("'[Errno -2]' thrown; Retrying in 1s [Retry %d/5].", attempt)
        raise ConnectionError("Couldn't reach 'someone/corpus' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    level = logging.getLogger("huggingface_hub").level
    root = logging.getLogger()
    handler = logging.StreamHandler()  # where a user's logging setup (or transformers') would print them
    root.addHandler(handler)
    try:
        with pytest.raises(DataError, match="hf:someone/corpus: cannot load .*Couldn't reach"):
            next(iter_documents("hf:someone/corpus"))
    finally:
        root.removeHandler(handler)
    assert "Retry" not in capsys.readouterr().err
    assert logging.getLogger("huggingface_hub").level == level  # levels restored afterwards
