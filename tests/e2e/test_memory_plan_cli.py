"""The memory plan from the command line: `unet-jax plan` and `train --plan` print it and exit; `train` refuses a
run over the budget in one message (a tiny budget through UNET_JAX_MEMORY_BUDGET, so no large run is needed);
`--no-memory-check` runs anyway and logs the compiled figure beside the estimate."""

import pytest

from unet_jax.cli import main
from unet_jax.runtime.memory import BUDGET_VARIABLE

TINY = ["--features", "4", "--depth", "2", "--tile-size", "60", "--batch-size", "4", "--no-augment"]
PARTS = ("parameters", "optimizer state (adam)", "gradients", "batch", "activations kept for backward", "temporaries",
         "total (estimate)")


def test_plan_prints_the_breakdown_and_the_budget_and_exits(capsys):
    assert main(["plan", *TINY]) == 0
    out = capsys.readouterr().out
    assert all(part in out for part in PARTS)
    assert "tile 60 px, batch 4 over 1 cpu device(s), float32, --remat none" in out
    assert "fits" in out and "host" in out


def test_train_plan_prints_the_same_and_writes_nothing(tmp_path, capsys):
    assert main(["plan", *TINY]) == 0
    planned = capsys.readouterr().out
    assert main(["train", "--plan", "--run-dir", str(tmp_path / "run"), *TINY]) == 0
    assert capsys.readouterr().out == planned
    assert not (tmp_path / "run").exists()


def test_a_run_over_the_budget_is_refused_in_one_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(BUDGET_VARIABLE, "1MiB")
    assert main(["train", "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("unet-jax train: error: the train step needs about ")
    assert f"over the budget of 1.0 MiB (${BUDGET_VARIABLE})" in err
    assert "--batch-size" in err and "--no-memory-check" in err
    assert not (tmp_path / "run").exists()


def test_plan_says_what_would_fit_when_over_the_budget(monkeypatch, capsys):
    monkeypatch.setenv(BUDGET_VARIABLE, "1MiB")
    assert main(["plan", *TINY]) == 0
    assert "does not fit. The largest batch that fits is" in capsys.readouterr().out


def test_a_bad_budget_variable_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv(BUDGET_VARIABLE, "plenty")
    assert main(["plan", *TINY]) == 2
    assert BUDGET_VARIABLE in capsys.readouterr().err


@pytest.mark.slow
def test_no_memory_check_runs_anyway_and_logs_the_compiled_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(BUDGET_VARIABLE, "1MiB")
    assert main(["train", "--no-memory-check", "--run-dir", str(tmp_path / "run"), "--steps", "1", "--eval-every", "1",
                 "--checkpoint-every", "1", "--no-progress", *TINY]) == 0
    logged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("memory: ")]
    assert len(logged) == 1 and "compiled step" in logged[0] and "estimated" in logged[0], logged
