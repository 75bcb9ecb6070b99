"""files.py: whole-or-nothing writes and output locations checked before the work."""

import os
import platform
import sys

import pytest

from changenet_trt.errors import InputError
from changenet_trt.files import atomic_open, atomic_write, check_output_dir, check_output_file


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write(target, "old\n")
    atomic_write(target, b"new\n")
    assert target.read_text() == "new\n"
    assert os.listdir(target.parent) == ["out.txt"]


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old complete file\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target, "w") as handle:
            handle.write("half a new fi")
            raise KeyboardInterrupt
    assert target.read_text() == "old complete file\n"
    assert os.listdir(tmp_path) == ["scores.csv"]


def test_check_output_file_refuses_folders_files_as_parents_and_inputs(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_file(tmp_path / "a_file" / "out.onnx")
    with pytest.raises(InputError, match="is also an input"):
        check_output_file(tmp_path / "a_file", inputs=[tmp_path / "a_file"])
    assert check_output_file(tmp_path / "new" / "deeper" / "out.onnx").endswith("out.onnx")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_check_output_file_refuses_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            check_output_file(locked / "out.csv")
    finally:
        locked.chmod(0o700)


def test_check_output_dir_refuses_a_file_and_a_run_that_would_replace_its_input(tmp_path):
    (tmp_path / "scores.csv").write_text("input data set")
    with pytest.raises(InputError, match="is an existing file"):
        check_output_dir(tmp_path / "scores.csv")
    with pytest.raises(InputError, match="also an input"):
        check_output_dir(tmp_path, inputs=[tmp_path / "scores.csv"], writes=["scores.csv", "summary.json"])
    assert check_output_dir(tmp_path / "fresh", inputs=[tmp_path / "scores.csv"], writes=["scores.csv"])



def test_release_freed_memory_trims_the_c_heap(monkeypatch):
    """glibc keeps the freed pages of ONNX Runtime's thread arenas resident (4.1 GB after fp16-check
    on TAO's export); release_freed_memory asks malloc_trim(0) to return them, and is a no-op where
    the C library has no malloc_trim."""
    from changenet_trt import threads

    calls = []

    class Libc:
        def malloc_trim(self, pad):
            calls.append(pad)
            return 1

    monkeypatch.setattr(threads, "_LOOKED_UP", True)
    monkeypatch.setattr(threads, "_LIBC", Libc())
    assert threads.release_freed_memory() is True and calls == [0]
    monkeypatch.setattr(threads, "_LIBC", None)
    assert threads.release_freed_memory() is False and calls == [0]
    monkeypatch.setattr(threads, "_LOOKED_UP", False)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert threads.release_freed_memory() is True  # the real one, found by name
