"""nrpm._io: atomic writes and the output-folder lock that keeps two runs from writing one results file."""

import json
import os
import socket
import subprocess
import sys

import pytest

from nrpm._io import LOCK_NAME, atomic_write, output_dir_lock


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _write_lock(folder, pid, host=None):
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                "command": "eval"}))


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")

    def fail(f):
        f.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail, binary=False)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_lock_is_held_during_the_run_and_released_after(tmp_path):
    folder = tmp_path / "run"
    with output_dir_lock(folder, "eval"):
        owner = json.loads((folder / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["command"] == "eval"
    assert not (folder / LOCK_NAME).exists()
    with pytest.raises(ValueError):
        with output_dir_lock(folder, "eval"):
            raise ValueError("the run failed")
    assert not (folder / LOCK_NAME).exists()  # released on errors too


def test_second_run_on_a_live_lock_is_refused(tmp_path):
    with output_dir_lock(tmp_path, "eval"):
        with pytest.raises(RuntimeError, match=rf"in use by nrpm eval \(pid {os.getpid()}.*{LOCK_NAME}"):
            with output_dir_lock(tmp_path, "audit"):
                pass
        assert (tmp_path / LOCK_NAME).exists()  # the refused run did not take the holder's lock away


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    _write_lock(tmp_path, _dead_pid())
    with output_dir_lock(tmp_path, "train"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("content", ["{not json", "{}", "[1]",
                                     json.dumps({"pid": 1, "host": "another-machine", "command": "eval"})])
def test_lock_that_cannot_be_checked_is_respected(tmp_path, content):
    (tmp_path / LOCK_NAME).write_text(content)
    owner = r"nrpm eval \(pid 1 on another-machine\)" if "another-machine" in content else "an unreadable lock"
    with pytest.raises(RuntimeError, match=f"in use by {owner}.*delete"):
        with output_dir_lock(tmp_path, "eval"):
            pass


def test_disabled_lock_writes_nothing(tmp_path):
    _write_lock(tmp_path, os.getpid())
    with output_dir_lock(tmp_path / "absent", "eval", enabled=False):
        pass
    assert not (tmp_path / "absent").exists()


def test_atomic_write_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real_fsync(fd)))
    atomic_write(tmp_path / "out.txt", lambda f: f.write("x"), binary=False)
    import stat

    assert (tmp_path / "out.txt").read_text() == "x"
    assert [stat.S_ISREG(m) for m in synced] == [True, False]  # the file, then the folder holding the rename
