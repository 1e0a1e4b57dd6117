"""Text corpora: where documents come from.

A *source* is one of

* ``"builtin"`` - English prose every Python install already carries (standard-library docstrings
  and the pydoc language-reference topics), so a run works offline and the package ships no text;
* a local path - a ``.txt`` file (the whole file is one document), a ``.jsonl`` file (one JSON object
  per line, text in ``text_field``), a ``.parquet`` file (column ``text_field``), or a folder holding
  any mix of them, read recursively in sorted order;
* ``"hf:NAME"`` - a Hugging Face dataset, streamed with ``datasets.load_dataset``. It is only touched
  when named, so nothing here reaches the network unless the user asks for it.

Every problem a user can fix (missing path, bad JSON line, wrong field name ...) raises `DataError`
with a one-line message that names the file and says what to do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from ..fileio import json_sha256
from . import _stdlib_prose

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)
PARQUET_SUFFIXES = (".parquet",)
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES

# Bump when the way documents are extracted changes, so caches keyed on a fingerprint are rebuilt.
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Built-in corpus
# ---------------------------------------------------------------------------------------------

def _extract_in_fresh_interpreter() -> list[str]:
    # -I: ignore PYTHON* variables and user site-packages; -S: no `site`, so no site-packages and
    # no help/exit in builtins. What remains is the bare standard library of this Python.
    with tempfile.TemporaryDirectory(prefix="metatokens-builtin-") as tmp:
        out = Path(tmp) / "documents.json"
        subprocess.run(
            [sys.executable, "-I", "-S", str(Path(__file__).with_name("_stdlib_prose.py")), str(out)],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=300,
        )
        return json.loads(out.read_text(encoding="ascii"))


@functools.lru_cache(maxsize=1)
def _builtin_corpus() -> tuple[str, ...]:
    try:
        documents = _extract_in_fresh_interpreter()
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        # E.g. an embedded Python without a usable sys.executable. Extracting in this process
        # works too, but the text may then differ slightly with what the process has patched.
        log.warning("built-in corpus: fresh interpreter failed (%s); extracting in this process", _first_line(exc))

        documents = _stdlib_prose.extract()
    if not documents:
        raise DataError("built-in corpus came out empty; this Python install lacks its standard library docstrings (-OO?)")
    return tuple(documents)


def builtin_documents() -> Iterator[str]:
    """Yield the built-in corpus: about 1.8 MB of English prose taken from this Python install.

    One document per standard-library module (its docstring, then those of its public classes,
    methods and functions) followed by one per pydoc language-reference topic. Docstrings are
    deduplicated and the order is sorted. The text is extracted once per process (~0.3 s) in a
    fresh isolated interpreter, so it is identical across runs of the same Python version and
    nothing is imported into the caller. Modules that fail to import, or act on import, are skipped.
    """
    yield from _builtin_corpus()


# ---------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------


def _decode(raw: bytes, *, bom: bool = True) -> tuple[str, bool]:
    """UTF-8 text of `raw` and whether bytes had to be replaced; a leading BOM is dropped if `bom`."""
    encoding = "utf-8-sig" if bom else "utf-8"
    try:
        return raw.decode(encoding), False
    except UnicodeDecodeError:
        return raw.decode(encoding, errors="replace"), True


def _local_files(path: Path, *, warn: bool = True) -> list[Path]:
    """The data files behind a local source: the file itself, or a folder's files, sorted."""
    if not path.exists():
        raise DataError(f"corpus path {str(path)!r} does not exist; pass an existing file or folder, 'builtin', or 'hf:NAME'")
    if path.is_file():
        if not path.name.lower().endswith(KNOWN_SUFFIXES):
            raise DataError(
                f"{path}: unknown file type {path.suffix!r}; use .txt (one document), .jsonl or .parquet"
            )
        return [path]
    files: list[Path] = []
    skipped: list[Path] = []
    for root, dirs, names in os.walk(path, followlinks=True):
        # Hidden folders (.git, .cache ...) hold metadata, not corpus text.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            file = Path(root) / name
            (files if name.lower().endswith(KNOWN_SUFFIXES) else skipped).append(file)
    files.sort(key=lambda f: f.relative_to(path).as_posix())
    # Downloaded datasets often carry README.md and the like next to the data; skip them,
    # but say so, since a misnamed data file would otherwise vanish silently.
    if skipped and warn and _unreported("skipped", str(path.resolve()), *sorted(map(str, skipped))):
        log.warning("%s: skipped %d file(s) that are not .txt/.jsonl/.parquet, e.g. %s", path, len(skipped),
                    sorted(skipped)[0].relative_to(path).as_posix())
    if not files:
        raise DataError(f"{path}: folder holds no .txt, .jsonl or .parquet files; point at a folder with corpus files")
    return files


_WARNED: set[tuple] = set()  # the keys of the corpus warnings this process has given


def _unreported(*key) -> bool:
    """Whether the warning of `key` is still to be given (from now on it counts as given): a run reads its
    corpus twice, to train the tokenizer and then to tokenise, yet each warning comes once per file."""
    first = key not in _WARNED
    _WARNED.add(key)
    return first


def _iter_txt(files: list[Path]) -> Iterator[str]:
    replaced: list[Path] = []
    for file in files:
        text, lossy = _decode(file.read_bytes())
        if lossy and _unreported("undecodable", str(file.resolve())):
            replaced.append(file)
        yield text
    if replaced:
        log.warning("%d .txt document(s) had undecodable bytes, replaced by U+FFFD (first: %s)", len(replaced), replaced[0])


def _field_text(record, field: str, where: str):
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with field {field!r}, got {type(record).__name__}")
    if field not in record:
        fields = ", ".join(sorted(map(str, record))[:10]) or "none"
        raise DataError(f"{where}: no field {field!r} (fields: {fields}); pass text_field= to pick the text field")
    value = record[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} holds {type(value).__name__}, expected a string")
    return _without_surrogates(value)


def _without_surrogates(text: str) -> str:
    """JSON escapes can encode lone surrogates (\\ud800), which no tokenizer accepts: replace them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def _iter_jsonl(file: Path, text_field: str) -> Iterator[str]:
    replaced = 0
    with open(file, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            line, lossy = _decode(raw, bom=lineno == 1)  # only a file's start may carry a BOM
            replaced += lossy
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}:{lineno}: not valid JSON ({exc.msg}); each line must hold one JSON object") from None
            yield _field_text(record, text_field, f"{file}:{lineno}")
    if replaced and _unreported("undecodable", str(file.resolve())):
        log.warning("%s: %d line(s) had undecodable bytes, replaced by U+FFFD", file, replaced)


def _import_pyarrow_parquet(file: Path):
    try:
        import pyarrow.parquet as pq  # optional dependency: pyarrow (pip install "metatokens[parquet]")
    except ImportError:
        raise DataError(f"{file}: reading .parquet needs pyarrow; pip install pyarrow") from None
    return pq


def _iter_parquet(file: Path, text_field: str) -> Iterator[str]:
    pq = _import_pyarrow_parquet(file)
    try:
        parquet = pq.ParquetFile(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
        raise DataError(f"{file}: cannot read parquet ({type(exc).__name__}: {_first_line(exc)})") from None
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        shown = ", ".join(columns[:10]) or "none"
        raise DataError(f"{file}: no column {text_field!r} (columns: {shown}); pass text_field= to pick the text column")
    # Batches keep memory bounded for files far larger than RAM.
    for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            if value is None:
                continue
            if isinstance(value, bytes):
                value, _ = _decode(value)
            if not isinstance(value, str):
                raise DataError(f"{file}: column {text_field!r} holds {type(value).__name__}, expected strings")
            yield value


def _iter_local(path: Path, text_field: str) -> Iterator[str]:
    files = _local_files(path)
    # Consecutive .txt files are read as one run so the undecodable-bytes warning comes once.
    run: list[Path] = []
    for file in files:
        if file.name.lower().endswith(TEXT_SUFFIXES):
            run.append(file)
            continue
        if run:
            yield from _iter_txt(run)
            run = []
        if file.name.lower().endswith(JSONL_SUFFIXES):
            yield from _iter_jsonl(file, text_field)
        else:
            yield from _iter_parquet(file, text_field)
    if run:
        yield from _iter_txt(run)


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _is_saved_dataset(path: Path) -> bool:
    """True for a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


class _QuietHub:
    """Hold the Hub clients' own warnings back while a dataset loads: without the network,
    huggingface_hub logs every retry of every request (11 lines before the one error that matters,
    which DataError then gives in one line). Errors still propagate; only log lines are held."""

    NAMES = ("huggingface_hub", "datasets", "fsspec")

    def __enter__(self):
        self.levels = {n: logging.getLogger(n).level for n in self.NAMES}
        for n in self.NAMES:
            logging.getLogger(n).setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for n, level in self.levels.items():
            logging.getLogger(n).setLevel(level)


def _iter_hf(name: str, text_field: str, hf_config: str | None, split: str) -> Iterator[str]:
    where = f"hf:{name}"
    if not name:
        raise DataError("source 'hf:' needs a dataset name, e.g. 'hf:wikitext' with hf_config='wikitext-103-raw-v1'")
    try:
        import datasets  # optional dependency: datasets (pip install "metatokens[hf]")
    except ImportError:
        raise DataError(f"source {where!r} needs the `datasets` package; pip install datasets") from None
    try:
        local = Path(name).expanduser()  # as corpus_fingerprint reads it
        if _is_saved_dataset(local):
            # save_to_disk output cannot go through load_dataset; it is read (memory-mapped) directly.
            dataset = datasets.load_from_disk(str(local))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise DataError(f"{where}: no split {split!r} (splits: {', '.join(dataset)}); pass split=")
                dataset = dataset[split]
        else:
            with _QuietHub():
                dataset = datasets.load_dataset(name, hf_config, split=split, streaming=True)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (network, config, files)
        raise DataError(
            f"{where}: cannot load (config={hf_config!r}, split={split!r}): {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    records = iter(dataset)
    index = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - a stream can fail late (network, bad shard)
            raise DataError(f"{where}: reading example {index} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        yield _field_text(record, text_field, f"{where} example {index}")
        index += 1


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def iter_documents(
    source: str,
    *,
    text_field: str = "text",
    hf_config: str | None = None,
    split: str = "train",
    max_documents: int | None = None,
) -> Iterator[str]:
    """Yield the non-empty documents of `source` in a fixed order, at most `max_documents` of them.

    Raises DataError (possibly mid-iteration, for a bad line deep in a file) for anything the
    user must fix, including a corpus with no text at all. Undecodable bytes are replaced, not
    fatal; the number of affected documents/lines is logged once per file (or run of .txt files).
    """
    if max_documents is not None and max_documents < 1:
        raise DataError(f"max_documents must be a positive integer or None, got {max_documents!r}")
    source = os.fspath(source)
    if source == "builtin":
        documents = builtin_documents()
    elif source.startswith("hf:"):
        documents = _iter_hf(source[3:], text_field, hf_config, split)
    else:
        documents = _iter_local(Path(source).expanduser(), text_field)
    yielded = 0
    for document in documents:
        if not document.strip():
            continue
        yield document
        yielded += 1
        if max_documents is not None and yielded >= max_documents:
            return
    if yielded == 0:
        hint = f"field {text_field!r} is empty everywhere or " if source != "builtin" else ""
        raise DataError(f"corpus {source!r} holds no text ({hint}no non-blank documents); check the source")


def _file_stats(files: list[Path], root: Path) -> list:
    stats = []
    for file in files:
        st = file.stat()
        relative = file.relative_to(root).as_posix() if file != root else file.name
        stats.append([relative, st.st_size, st.st_mtime_ns])
    return stats


def corpus_fingerprint(
    source: str,
    *,
    text_field: str = "text",
    hf_config: str | None = None,
    split: str = "train",
    max_documents: int | None = None,
) -> str:
    """A stable hex digest identifying the documents `iter_documents` would yield, for cache keys.

    builtin: Python version + hash of the text. Local: resolved path + each file's relative
    path, size and mtime (so editing a file invalidates caches without re-reading it). hf: name,
    config and split (plus file stats when NAME is a local folder); a remote dataset that changes
    upstream under the same name is not detected.
    """
    source = os.fspath(source)
    common = [_FORMAT_VERSION, max_documents]
    if source == "builtin":
        content = hashlib.sha256()
        for document in builtin_documents():
            content.update(document.encode("utf-8", errors="surrogatepass") + b"\0")
        return json_sha256(("builtin", sys.version, content.hexdigest(), *common))
    if source.startswith("hf:"):
        name = source[3:]
        local = Path(name).expanduser()
        stats = _file_stats(sorted(p for p in local.rglob("*") if p.is_file()), local) if local.is_dir() else None
        return json_sha256(("hf", name, hf_config, split, text_field, stats, *common))
    path = Path(source).expanduser()
    files = _local_files(path, warn=False)
    return json_sha256(("local", str(path.resolve()), _file_stats(files, path), text_field, *common))
