"""The mutation list stays applicable to the code, and the checker really tells caught from passed.

The full check (`make mutation`, ~8 min on 2 cores) is too slow for every CI run; these keep it honest:
when a rewrite moves the code a mutation targets, the mutation must be rewritten with it.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from parity_tests.mutation_check import ROOT, StaleMutation, apply_edits, check
from parity_tests.mutations import MUTATIONS, Edit

pytestmark = pytest.mark.host  # the same on any machine: a GPU call leaves it out

# The bugs the suite is required to catch (see parity_tests/results/mutation/).
REQUIRED = {
    "concat-order-both", "skip-crop-off-by-one-both", "up-conv-transposed-not-flipped", "batchnorm-no-bessel",
    "label-crop-off-by-one-both", "relu-dropped-bottom-flax",
}


def test_the_required_mutations_are_listed_once():
    names = [m.name for m in MUTATIONS]
    assert len(names) == len(set(names))
    assert REQUIRED <= set(names)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_mutation_applies_to_the_current_code(mutation, tmp_path):
    for edit in mutation.edits:
        (tmp_path / edit.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / edit.path, tmp_path / edit.path)
    apply_edits(tmp_path, mutation.edits)  # raises StaleMutation if a text is not there exactly once
    for edit in mutation.edits:
        assert edit.new in (tmp_path / edit.path).read_text()
    for test in mutation.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test


def test_a_stale_mutation_is_refused(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\nx = 1\n")
    with pytest.raises(StaleMutation, match="occurs 2 times"):
        apply_edits(tmp_path, (Edit("a.py", "x = 1", "x = 2"),))
    with pytest.raises(StaleMutation, match="occurs 0 times"):
        apply_edits(tmp_path, (Edit("a.py", "y = 1", "y = 2"),))


@pytest.mark.slow  # two short pytest runs in subprocesses on a copy of the project
def test_the_checker_tells_a_caught_mutation_from_a_clean_run():
    test = ("tests/unit/test_model.py::test_batchnorm_train_mode_uses_batch_statistics_and_updates_running_ones",)
    assert check(None, timeout=300, tests=test)["outcome"] == "passed"
    bessel = next(m for m in MUTATIONS if m.name == "batchnorm-no-bessel")
    record = check(dataclasses.replace(bessel, tests=test), timeout=300)
    assert record["outcome"] == "caught", record
    assert record["caught_by"].startswith(test[0])
