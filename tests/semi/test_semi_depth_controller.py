from __future__ import annotations

import json
import math
import random
from itertools import pairwise

import pytest
import torch
from dgseg.pipeline.config import ControllerConfig
from dgseg.pipeline.semi.depth_controller import (
    AdaptiveController,
    ConstantController,
    ScheduledController,
    build_controller,
)


def _one(stats, **kw):
    """The weight of a fresh adaptive controller after one measurement."""
    return AdaptiveController(**kw).update(0, stats)


def test_warm_start_returns_init_weight_until_measured():
    c = AdaptiveController(init_weight=0.3, min_weight=0.1, max_weight=0.9)
    assert c.weight == 0.3
    assert c.update(0, None) == pytest.approx(0.3)
    assert c.update(1, {"agreement": None, "loss_rgb": None, "loss_depth": None}) == pytest.approx(0.3)
    # a loss ratio of 1 and agreement at the reference are neutral too
    assert c.update(2, {"agreement": 0.5, "loss_rgb": 2.0, "loss_depth": 2.0}) == pytest.approx(0.3)


def test_leans_on_depth_when_agreement_is_low_and_hands_over_as_it_rises():
    weights = [_one({"agreement": a}) for a in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)]
    assert all(w1 > w2 for w1, w2 in pairwise(weights))  # strictly decreasing
    assert weights[0] > 0.5 > weights[-1]
    # defaults: z = +-beta * 0.5 = +-2 at agreement 0 / 1
    assert weights[0] == pytest.approx(1 / (1 + math.exp(-2)))
    assert weights[-1] == pytest.approx(1 / (1 + math.exp(2)))
    assert _one({"agreement": 0.0}, agreement_gain=0.0) == pytest.approx(0.5)


def test_reacts_to_loss_imbalance_as_inverse_loss_weighting():
    # depth set fitted better (lower loss) -> more depth weight, monotone in the ratio
    ratios = [0.25, 0.5, 1.0, 2.0, 4.0]
    weights = [_one({"loss_rgb": r, "loss_depth": 1.0}) for r in ratios]
    assert all(w1 < w2 for w1, w2 in pairwise(weights))
    # beta = 0, gamma = 1, u0 = 1/2: w = L_rgb / (L_rgb + L_depth) exactly
    for r, w in zip(ratios, weights, strict=True):
        assert w == pytest.approx(r / (r + 1.0))
    assert _one({"loss_rgb": 4.0, "loss_depth": 1.0}, loss_gain=0.0) == pytest.approx(0.5)
    # gamma = 1 equalises the weighted terms in the ratio u0 : (1 - u0)
    w = _one({"loss_rgb": 3.0, "loss_depth": 0.7}, init_weight=0.3)
    assert (w * 0.7) / ((1 - w) * 3.0) == pytest.approx(0.3 / 0.7)


def test_bounded_for_extreme_statistics():
    lo, hi = 0.1, 0.8
    for stats in (
        {"agreement": 0.0, "loss_rgb": 1e9, "loss_depth": 1e-9},
        {"agreement": 1.0, "loss_rgb": 1e-9, "loss_depth": 1e9},
        {"loss_rgb": 0.0, "loss_depth": 0.0},
        {"loss_rgb": 0.0, "loss_depth": 5.0},
    ):
        w = _one(stats, init_weight=0.4, min_weight=lo, max_weight=hi, agreement_gain=100.0)
        assert lo <= w <= hi
    assert _one({"agreement": 0.0}, init_weight=0.4, min_weight=lo, max_weight=hi, agreement_gain=1e4) == pytest.approx(
        hi
    )
    # a degenerate range is a constant
    assert _one({"agreement": 0.0}, init_weight=0.4, min_weight=0.4, max_weight=0.4) == 0.4


def test_running_statistics_are_bias_corrected_emas():
    c = AdaptiveController(momentum=0.9)
    for step in range(5):
        c.update(step, {"agreement": 0.7})
    assert c.running("agreement") == pytest.approx(0.7)  # a constant input is its own mean from step 0
    c = AdaptiveController(momentum=0.9)
    c.update(0, {"agreement": 0.0})
    c.update(1, {"agreement": 1.0})
    assert c.running("agreement") == pytest.approx(1 / 1.9)
    # missing and non-finite values leave the statistic alone
    c.update(2, {"agreement": float("nan"), "loss_rgb": torch.tensor(float("inf"))})
    c.update(3, {"agreement": None})
    assert c.running("agreement") == pytest.approx(1 / 1.9) and c.running("loss_rgb") is None
    # the weight follows the running, not the latest, agreement
    c = AdaptiveController(momentum=0.99)
    for step in range(50):
        c.update(step, {"agreement": 0.0})
    w = c.update(50, {"agreement": 1.0})
    assert w > 0.5  # one high reading barely moves a long history of disagreement


def test_handover_over_a_run_with_rising_agreement():
    c = AdaptiveController(momentum=0.9)
    weights = [c.update(s, {"agreement": min(1.0, s / 100), "loss_rgb": 1.0, "loss_depth": 1.0}) for s in range(150)]
    assert weights[0] > 0.8 and weights[-1] < 0.15
    assert all(w1 >= w2 for w1, w2 in pairwise(weights))


def test_unknown_statistic_is_an_error():
    with pytest.raises(ValueError, match="agreemnt"):
        AdaptiveController().update(0, {"agreemnt": 0.5})


def _random_stats(rng):
    return {
        "agreement": rng.random() if rng.random() > 0.2 else None,
        "loss_rgb": rng.uniform(0.1, 5.0),
        "loss_depth": torch.tensor(rng.uniform(0.1, 5.0)),
    }


@pytest.mark.parametrize("kind", ["adaptive", "constant", "scheduled"])
def test_state_round_trip_continues_identically(kind):
    cfg = ControllerConfig(kind=kind, init_weight=0.6, momentum=0.95, schedule_iters=30)
    rng = random.Random(0)
    a = build_controller(cfg)
    for step in range(20):
        a.update(step, _random_stats(rng))
    state = json.loads(json.dumps(a.state_dict()))  # JSON-able
    b = build_controller(cfg)
    b.load_state_dict(state)
    assert b.weight == a.weight and b.state_dict() == a.state_dict()
    for step in range(20, 40):
        stats = _random_stats(rng)
        assert a.update(step, stats) == b.update(step, stats)


def test_state_of_another_kind_is_refused():
    state = AdaptiveController().state_dict()
    with pytest.raises(ValueError, match="adaptive"):
        ConstantController(0.5).load_state_dict(state)
    broken = dict(state)
    del broken["agreement_ema"]
    with pytest.raises(ValueError, match="agreement_ema"):
        AdaptiveController().load_state_dict(broken)


def test_constant_ignores_statistics():
    c = ConstantController(0.35, 0.0, 1.0)
    for step, a in enumerate((0.0, 1.0, 0.5)):
        assert c.update(step, {"agreement": a, "loss_rgb": 9.0, "loss_depth": 0.1}) == 0.35


def test_scheduled_cosine_values():
    c = ScheduledController(init_weight=0.8, final_weight=0.2, schedule_iters=100)
    assert c.update(0) == pytest.approx(0.8)
    assert c.update(50, {"agreement": 1.0}) == pytest.approx(0.5)
    assert c.update(25) == pytest.approx(0.2 + 0.6 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert c.update(100) == pytest.approx(0.2)
    assert c.update(10_000) == pytest.approx(0.2)
    values = [c.update(s) for s in range(0, 101, 5)]
    assert all(v1 >= v2 for v1, v2 in pairwise(values))
    up = ScheduledController(init_weight=0.1, final_weight=0.9, schedule_iters=10)  # a rising ramp works too
    assert up.update(0) == pytest.approx(0.1) and up.update(10) == pytest.approx(0.9)
    assert ScheduledController(0.8, 0.2, 0).update(0) == pytest.approx(0.2)


def test_build_controller_maps_the_config():
    cfg = ControllerConfig(
        kind="adaptive", init_weight=0.4, min_weight=0.1, max_weight=0.9, momentum=0.5, agreement_gain=2.0,
        agreement_ref=0.3, loss_gain=0.5,
    )
    c = build_controller(cfg)
    assert isinstance(c, AdaptiveController)
    assert (c.init_weight, c.min_weight, c.max_weight, c.momentum) == (0.4, 0.1, 0.9, 0.5)
    assert (c.agreement_gain, c.agreement_ref, c.loss_gain) == (2.0, 0.3, 0.5)
    assert isinstance(build_controller(ControllerConfig(kind="constant")), ConstantController)
    s = build_controller(ControllerConfig(kind="scheduled", init_weight=0.7, final_weight=0.1, schedule_iters=9))
    assert isinstance(s, ScheduledController) and (s.final_weight, s.schedule_iters) == (0.1, 9)
    with pytest.raises(ValueError, match="kind"):
        build_controller(ControllerConfig(kind="magic"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init_weight"):
        build_controller(ControllerConfig(init_weight=1.5))
    with pytest.raises(ValueError, match="momentum"):
        build_controller(ControllerConfig(momentum=1.0))
