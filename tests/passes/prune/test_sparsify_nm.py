"""sparsify-nm: the 2:4 pattern along the input channels, marks, target notes, idempotence."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from compiler.context import CompileContext
from compiler.ir import constant_array, to_proto
from passes.prune.sparsity import PATTERN_KEY, SparsifyNMPass, input_channel_axis, satisfies_nm
from targets.registry import get_target
from tests.helpers import signature
from tests.passes.prune._models import concat_model, prepared, residual_model

N, M = 2, 4


def _weighted(model):
    return [n for n in model.graph if n.op_type in ("Conv", "Gemm", "MatMul")]


def test_every_run_of_four_input_channels_keeps_its_two_largest():
    model = prepared(residual_model())
    originals = {id(n): constant_array(n.inputs[1]) for n in _weighted(model)}
    before = signature(model)
    result = SparsifyNMPass()(model, CompileContext())
    assert result.modified and signature(model) == before
    onnx.checker.check_model(to_proto(model), full_check=True)
    marked = 0
    for node in _weighted(model):
        old, new = originals[id(node)], constant_array(node.inputs[1])
        axis = input_channel_axis(node, new)
        if old.shape[axis] % M:
            assert np.array_equal(old, new)
            continue
        marked += 1
        assert node.metadata_props[PATTERN_KEY] == f"{N}:{M},axis={axis}"
        assert satisfies_nm(new, axis, N, M)
        runs_old = np.moveaxis(np.abs(old), axis, -1).reshape(-1, M)
        runs_new = np.moveaxis(new, axis, -1).reshape(-1, M)
        kept = runs_new != 0
        # The kept entries are the unchanged two largest magnitudes of each run.
        assert np.all(kept.sum(axis=1) == N)
        assert np.array_equal(np.sort(runs_old, axis=1)[:, M - N :], np.sort(np.abs(runs_new), axis=1)[:, M - N :])
    assert marked > 0 and model.metadata_props[PATTERN_KEY]
    assert any("left dense" in n for n in result.notes)  # the first Conv has 3 input channels


def test_a_second_run_changes_nothing():
    model = prepared(residual_model())
    SparsifyNMPass()(model, CompileContext())
    assert SparsifyNMPass()(model, CompileContext()).modified is False


def test_notes_say_whether_the_target_uses_the_pattern():
    cpu = get_target("cpu")
    result = SparsifyNMPass()(prepared(concat_model()), CompileContext(target=cpu))
    assert any("does not declare sparse_2_4" in n and "densely" in n for n in result.notes)
    sparse_target = dataclasses.replace(cpu, precisions={**cpu.precisions, "sparse_2_4": True})
    result = SparsifyNMPass()(prepared(concat_model()), CompileContext(target=sparse_target))
    assert any("declares sparse_2_4" in n for n in result.notes)
