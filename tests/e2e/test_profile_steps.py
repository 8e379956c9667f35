"""`unet-jax train --profile-steps A:B` writes a jax.profiler trace of those steps into the run directory."""

import jax
import pytest

from unet_jax.cli import main
from unet_jax.training.loop import train
from unet_jax.training.presets import resolve
from unet_jax.training.profiling import TRACE_NAME

TINY = dict(features=4, depth=2, tile_size=60, batch_size=2, cells_train_images=4, cells_val_images=2,
            cells_image_size=64, val_tiles_per_image=1, log_every=1, eval_every=4, checkpoint_every=4, steps=4)


def event_names(xplane) -> set:
    profile = jax.profiler.ProfileData.from_file(str(xplane))
    return {event.name for plane in profile.planes for line in plane.lines for event in line.events}


def test_the_trace_holds_the_asked_steps_of_the_train_step(tmp_path):
    run_dir, lines = tmp_path / "run", []
    train(resolve("demo", {**TINY, "profile_steps": "2:3"}), run_dir, progress=False, log=lines.append)
    traces = list((run_dir / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and list((run_dir / "profile").rglob("perfetto_trace.json.gz"))
    names = event_names(traces[0])
    assert any("train_step" in name for name in names), sorted(names)[:50]  # the compiled step ran while tracing
    assert TRACE_NAME in names  # the step markers TensorBoard splits the trace by
    assert any(line.startswith("profile of steps 2-3 written to") for line in lines)


@pytest.mark.parametrize("value", ["3:2", "0:1", "2", "a:b"])
def test_a_bad_range_is_refused_before_anything_is_written(tmp_path, capsys, value):
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "--profile-steps", value, "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--profile-steps" in error
    assert not run_dir.exists()
