"""trainer/diagnosis.py's `reference` (the documented rule the page's blamed layer is checked
against) by hand, and the online detector's attribution against it on synthetic blow-ups: pure
functions on numbers, no training."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradwatch.diagnosis import Diagnosis, reference

NAN = math.nan


def test_the_reference_by_hand() -> None:
    names = ["a", "b", "c", "d"]
    steady = [[1.0, 1.0, 1.0, 1.0]] * 30
    # c departs (100x its median) one step before a does; then every gradient is NaN.
    grads = steady + [[1.0, 1.0, 100.0, 1.0], [100.0, 1.0, 200.0, 1.0], [NAN] * 4]
    ref = reference(names, grads)
    assert ref == {"origin": "c", "top": ["c", "a", "b"], "rise": 2, "first": ["c"]}
    # Nothing departs at the last finite step: the largest ratio there is the answer, rise 0.
    calm = reference(names, steady + [[1.0, 3.0, 2.0, 1.0], [NAN, 1.0, 1.0, 1.0]])
    assert calm == {"origin": "b", "top": ["b", "c", "a"], "rise": 0, "first": ["b"]}
    assert reference(names, steady) is None  # never non-finite: nothing to explain
    assert reference(names, [[1.0] * 4, [NAN] * 4]) == {"origin": None, "top": [], "rise": 0}  # no history


@pytest.mark.parametrize("seed", range(6))
def test_the_detector_blames_the_layer_the_reference_does(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = [f"layer{i}.weight" for i in range(6)]
    origin = int(rng.integers(len(names)))
    grads = np.exp(rng.normal(0.0, 0.3, (60, len(names))))
    grads[39:, origin] *= 30.0 * 3.0 ** np.arange(21)  # the origin departs at step 40 and keeps growing
    grads[42:] *= 50.0  # three steps later every layer follows
    grads[49:] = NAN  # step 50: the run diverges
    ref = reference(names, grads.tolist())
    assert ref["origin"] == names[origin] and ref["rise"] == 10  # what was planted: steps 40-49
    diagnosis = Diagnosis(names)
    for step, g in enumerate(grads.tolist(), start=1):
        diagnosis.step({"step": step, "loss": 1.0, "accuracy": 0.5, "grad_norm": g,
                        "global_grad_norm": math.sqrt(sum(x * x for x in g))})
        if diagnosis.summary.get("diverged_step"):
            break
    s = diagnosis.summary
    assert s["diverged_step"] == 50 and s["diverged_layer"] == ref["origin"]
    assert s["diverged_since"] == 50 - ref["rise"]  # the step its departure began: 40
