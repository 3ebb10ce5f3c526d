"""Folds of one network in one fused graph: grouping, and the graph's output is the folds' weighted mean."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
from toy_models import channel_sigmoid_model

from hieseg.engine.ensemble import OPENVINO_MAX_2D_BATCH, LoadedMember, member_rows
from hieseg.engine.fused import fused_graph, group_member, group_members
from hieseg.engine.manifest import load_manifest
from hieseg.engine.providers import CPU, OPENVINO


def test_folds_group_by_network_in_manifest_order(toy_model):
    toy = load_manifest(toy_model).members
    folds = [dataclasses.replace(toy[0], name=f"toy3d_f{k}", weight=0.1 * (k + 1)) for k in range(3)]
    groups = group_members([folds[0], toy[1], folds[1], folds[2]])
    assert [[m.name for m in g] for g in groups] == [["toy3d_f0", "toy3d_f1", "toy3d_f2"], ["toy2d"]]
    member = group_member(groups[0])
    assert member.name == "toy3d_f0+toy3d_f1+toy3d_f2" and member.weight == pytest.approx(0.6)
    assert group_member(groups[1]) is toy[1]
    different = dataclasses.replace(folds[1], tta_flips=((),))  # other flips: cannot share the input passes
    assert len(group_members([folds[0], different])) == 2


def test_fused_graph_is_the_weighted_mean_of_the_folds():
    folds = [channel_sigmoid_model(3, c, offset, gain).SerializeToString()
             for c, offset, gain in [(0, 0.2, 3.0), (1, -0.5, -2.0), (0, 0.9, 7.0)]]
    weights = [0.15, 0.05, 0.3]
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 6, 7)).astype(np.float32)
    outputs = [ort.InferenceSession(f, providers=[CPU]).run(None, {"input": x})[0] for f in folds]
    expected = sum(w * o for w, o in zip(weights, outputs)) / sum(weights)
    fused = ort.InferenceSession(fused_graph(folds, weights), providers=[CPU])
    assert [i.name for i in fused.get_inputs()] == ["input"]
    np.testing.assert_allclose(fused.run(None, {"input": x})[0], expected, atol=1e-6)


def test_report_lists_every_fold_of_a_shared_session(toy_model):
    toy = load_manifest(toy_model).members
    folds = tuple(dataclasses.replace(toy[1], name=f"toy2d_f{k}", batch_size=16) for k in range(2))
    shared = LoadedMember(group_member(folds), None, OPENVINO, parts=folds)
    rows = member_rows([shared, LoadedMember(toy[0], None, CPU)])
    assert [(r["name"], r["provider"], r["session"]) for r in rows] == [
        ("toy2d_f0", OPENVINO, "toy2d_f0+toy2d_f1"), ("toy2d_f1", OPENVINO, "toy2d_f0+toy2d_f1"),
        ("toy3d", CPU, "toy3d")]
    assert shared.batch_size == OPENVINO_MAX_2D_BATCH < 16  # OpenVINO's 2D slices per pass are capped
    assert LoadedMember(folds[0], None, CPU).batch_size == 16
