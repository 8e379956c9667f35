"""Host work of the seed network's tests at 572 px, timed on any machine with both train steps stubbed.

    python parity_tests/studies/seed572_host_work.py {mode,float64,old-adam} [--reps 3]

The GPU estimate (parity_tests/gpu_estimate.py) prices the seed-572 tests from the H200 run's
durations of the old tests; what differs between old and new tests beside the GPU work is host
work: the 31M-parameter state rounded, ported, copied and compared. This times that part alone,
here, by replacing `unet_torch.train_step` and the Flax train step with stubs that hand back the
tensors they were given (the torch stub sets every gradient to ones made once per shape, as a
real step makes them on the device), and the float64 reference with random snapshots of the seed
network's shapes. Run by path, with PYTHONPATH at the tree to time (an export of an older commit
times that commit's tests):

- `mode`: test_precision_mode_relative_to_torch[seed572-strict] twice on the same reference
  ("first": what the first mode pays; "later": what the other modes pay);
- `float64`: test_one_step_float64_both_frameworks[seed572];
- `old-adam`: the old test_adam_steps[seed572-strict] (commit e6dd4a0 and before).

Each repetition draws a new reference. Prints one line per repetition.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import jax.numpy as jnp
import numpy as np
import torch

import parity_tests.test_precision_modes as tests
import unet_torch
from parity_tests import training


class Recorder:
    """The `parity` fixture without the report: the figures are not what is timed."""

    def check(self, *args, **kwargs):
        pass

    all_recorded = staticmethod(contextlib.nullcontext)


def stub_steps() -> None:
    ones: dict[tuple, torch.Tensor] = {}

    def torch_step(model, optimizer, images, masks, autocast_dtype=None):
        for param in model.parameters():
            shape = tuple(param.shape)
            if shape not in ones:
                ones[shape] = torch.ones_like(param)
            param.grad = ones[shape]
        return torch.tensor(2.5)

    def flax_step(state, images, masks):
        return state, {"loss": jnp.float32(2.5), "grad_norm": jnp.float32(1.0)}

    unet_torch.train_step = torch_step
    training.flax_train_step = lambda: flax_step  # the new tests' step
    training.make_train_step = lambda loss: flax_step  # the old tests'


def random_state(rng) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(v.shape) for k, v in unet_torch.UNet().state_dict().items()}


def new_reference(rng) -> dict:
    """precision_checks.reference's dict for the seed network at 572, drawn at random."""
    from unet_jax.weights.port import flatten_variables, torch_to_flax

    snapshots = [training.Snapshot(step, random_state(rng), random_state(rng),
                                   {k: np.abs(v) for k, v in random_state(rng).items()}, None if step == 0 else 2.5)
                 for step in range(3)]
    flat = flatten_variables(torch_to_flax(snapshots[1].state, tests.SEED_572.config))
    snapshots[1].grads = {k: v for k, v in flat.items() if k.startswith("params/")}
    return {"logits": None, "grads": snapshots[1].grads, "snapshots": snapshots, "weights_rms": 0.05}


def timed(test) -> float:
    started = time.perf_counter()
    test()
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test", choices=("mode", "float64", "old-adam"))
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    stub_steps()
    rng = np.random.default_rng(0)
    recipe = tests.SEED_572
    for rep in range(args.reps):
        if args.test == "old-adam":
            run = training.Run([2.5] * recipe.steps, [1.0] * recipe.steps, random_state(rng))
            old = {"init": random_state(rng), "run": run}
            tests.reference = lambda recipe, old=old: old
            print(f"old-adam rep {rep}: {timed(lambda: tests.test_adam_steps(recipe, 'strict', Recorder())):.1f} s", flush=True)
            continue
        from parity_tests import precision_checks

        reference = new_reference(rng)
        precision_checks.reference = lambda recipe, device="cpu", reference=reference: reference
        if args.test == "mode":
            first, later = (timed(lambda: tests.test_precision_mode_relative_to_torch(recipe, "strict", Recorder()))
                            for _ in range(2))
            print(f"mode rep {rep}: first {first:.1f} s, later {later:.1f} s", flush=True)
        else:
            print(f"float64 rep {rep}: {timed(lambda: tests.test_one_step_float64_both_frameworks(recipe, Recorder())):.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
