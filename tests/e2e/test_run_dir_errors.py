"""A run directory that can't be written, or holds the user's own files: one line, before any work."""

import os

import pytest

from unet_jax.cli import main

TINY = ["--features", "4", "--depth", "2", "--tile-size", "60", "--batch-size", "2", "--cells-train-images", "4",
        "--cells-val-images", "2", "--cells-image-size", "64", "--val-tiles-per-image", "1", "--no-progress"]


def test_an_unwritable_run_dir_fails_in_one_line_before_any_work(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    run_dir = tmp_path / "a-file" / "run"
    assert main(["train", "--run-dir", str(run_dir), *TINY]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(tmp_path / "a-file") in error and "Fix:" in error
    assert main(["train", "--run-dir", str(tmp_path / "a-file"), *TINY]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "locked").mkdir(mode=0o555)
    assert main(["train", "--run-dir", str(tmp_path / "locked" / "run"), *TINY]) == 2
    assert "permission denied" in capsys.readouterr().err


@pytest.mark.parametrize("theirs", [("notes.txt", "loss.png"), ("config.json",)])
def test_a_folder_of_the_users_own_files_is_refused_and_left_as_it_was(tmp_path, capsys, theirs):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in theirs:
        (folder / name).write_text(f"the user's {name}")
    assert main(["train", "--run-dir", str(folder), *TINY]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(folder) in error and theirs[0] in error
    assert "Fix: give --run-dir a new or empty folder" in error
    assert sorted(p.name for p in folder.iterdir()) == sorted(theirs)  # nothing written, no lock left behind
    assert all((folder / name).read_text() == f"the user's {name}" for name in theirs)
