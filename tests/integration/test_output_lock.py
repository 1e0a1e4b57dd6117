"""Two real processes on one output folder: the second writer is refused in one line, and the folder
is written once the first has ended; the lock file and the parents made for it do not stay."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import run_cli, subprocess_env

from metatokens.errors import StudyError
from metatokens.fileio import output_lock


def test_a_second_writer_of_an_output_folder_is_refused(toy_runs, tmp_path):
    """Two real processes: one holds the export's folder; `metatokens export` into it is refused, and
    succeeds once the first has ended."""
    out = tmp_path / "export"
    ready, release = tmp_path / "ready", tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, pathlib\n"
         "from metatokens.fileio import output_lock\n"
         "from metatokens.errors import HFInteropError\n"
         "with output_lock(sys.argv[1], HFInteropError):\n"
         "    pathlib.Path(sys.argv[2]).touch()\n"
         "    while not pathlib.Path(sys.argv[3]).exists():\n"
         "        time.sleep(0.05)\n",
         str(out), str(ready), str(release)], env=subprocess_env())
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists()
        second = subprocess.run([sys.executable, "-m", "metatokens", "export", "--checkpoint", str(toy_runs / "run"),
                                 "--out", str(out)], env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1].startswith("metatokens export: error: ")
        assert "being written by another metatokens process (pid" in second.stderr
        assert not out.exists()
    finally:
        release.touch()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    code, err = run_cli("export", "--checkpoint", str(toy_runs / "run"), "--out", str(out))
    assert code == 0, err
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no lock file left


def test_output_lock_refuses_a_second_holder_in_the_same_process_tree(tmp_path):
    out = tmp_path / "x" / "out"
    with output_lock(out, StudyError):
        assert (tmp_path / "x" / ".out.lock").is_file()
        code = subprocess.run([sys.executable, "-c",
                               "import sys\nfrom metatokens.fileio import output_lock\nfrom metatokens.errors import StudyError\n"
                               "try:\n    output_lock(sys.argv[1], StudyError).__enter__()\n"
                               "except StudyError:\n    sys.exit(3)\n", str(out)], env=subprocess_env()).returncode
        assert code == 3
    assert not (tmp_path / "x").exists()  # the parent it made for the lock, left empty, is gone
