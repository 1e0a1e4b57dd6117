"""Determinism across processes: a fresh Python process with another PYTHONHASHSEED extracts the
same built-in corpus and generates the same task examples (guards against anything that depends on
the iteration order of string sets and dicts). The in-process checks of both are in
tests/unit/test_data_corpora.py and tests/unit/test_tasks.py."""

from __future__ import annotations

import os
import subprocess
import sys

from metatokens.data.corpora import corpus_fingerprint


def test_builtin_corpus_same_in_a_fresh_process_with_other_hash_seed():
    code = "from metatokens.data.corpora import corpus_fingerprint; print(corpus_fingerprint('builtin'))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == corpus_fingerprint("builtin")


def test_same_examples_in_a_fresh_process_with_another_hash_seed(sentence_tokenizer, tmp_path):
    # Guards against anything that depends on set/dict iteration order of strings.
    sentence_tokenizer.save(tmp_path / "tok.json")
    script = (
        "import hashlib, sys\n"
        "from metatokens.tokenizer import MetaTokenizer\n"
        "from metatokens.tasks import TASKS, make_examples\n"
        "tok = MetaTokenizer.from_file(sys.argv[1])\n"
        "h = hashlib.sha256()\n"
        "for t in TASKS:\n"
        "    for e in make_examples(t, tok, length=200, n=5, seed=5):\n"
        "        h.update(repr((e.prompt_ids, e.answer_ids, e.meta_positions)).encode())\n"
        "print(h.hexdigest())\n"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        command = [sys.executable, "-c", script, str(tmp_path / "tok.json")]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
