"""Hungarian matcher: optimal against brute force, costs against a direct computation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from dgseg.pipeline.model.matcher import HungarianMatcher
from matcher_reference import cost_matrix


def _case(g, q, n, k=3, h=6, w=8):
    logits = torch.randn(q, k + 1, generator=g)
    masks = torch.randn(q, h, w, generator=g) * 3
    labels = torch.randint(0, k, (n,), generator=g)
    tgt = torch.rand(n, 4 * h, 4 * w, generator=g) > 0.6
    return logits, masks, labels, tgt


@pytest.mark.parametrize("q,n", [(4, 2), (5, 3), (5, 5), (3, 4)])
def test_assignment_is_optimal_against_brute_force(q, n):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=64)
    g = torch.Generator().manual_seed(q * 10 + n)
    for trial in range(5):
        logits, masks, labels, tgt = _case(g, q, n)
        outputs = {"pred_logits": logits[None], "pred_masks": masks[None]}
        torch.manual_seed(trial)
        (rows, cols), = matcher(outputs, [{"labels": labels, "masks": tgt}])
        torch.manual_seed(trial)  # the same random points as the call above
        cost = cost_matrix(matcher, logits, masks, labels, tgt)
        assert len(rows) == min(q, n) and len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        got = cost[rows, cols].sum().item()
        if q >= n:
            best = min(sum(cost[p[t], t].item() for t in range(n)) for p in itertools.permutations(range(q), n))
        else:
            best = min(sum(cost[r, p[r]].item() for r in range(q)) for p in itertools.permutations(range(n), q))
        assert got == pytest.approx(best, abs=1e-5)


def test_cost_terms_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    logits, masks, labels, tgt = _case(g, 3, 2)
    points = torch.rand(50, 2, generator=g)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=3.0, num_points=50)
    cost = cost_matrix(matcher, logits, masks, labels, tgt, points=points)
    grid = (2 * points - 1)[None, :, None, :]
    pred = F.grid_sample(masks[:, None], grid.expand(3, -1, -1, -1), align_corners=False)[:, 0, :, 0]
    tp = F.grid_sample(tgt[:, None].float(), grid.expand(2, -1, -1, -1), align_corners=False)[:, 0, :, 0]
    prob = logits.softmax(-1)
    for i in range(3):
        for j in range(2):
            bce = F.binary_cross_entropy_with_logits(pred[i], tp[j])
            s = pred[i].sigmoid()
            dice = 1 - (2 * (s * tp[j]).sum() + 1) / (s.sum() + tp[j].sum() + 1)
            want = -2.0 * prob[i, labels[j]] + 5.0 * bce + 3.0 * dice
            assert cost[i, j].item() == pytest.approx(want.item(), abs=1e-5)


def test_a_perfect_query_is_matched_to_its_target():
    tgt = torch.zeros(2, 32, 32, dtype=torch.bool)
    tgt[0, :16] = True
    tgt[1, 16:, 16:] = True
    masks = torch.full((4, 8, 8), -10.0)
    masks[2, :4] = 10.0
    masks[0, 4:, 4:] = 10.0
    logits = torch.zeros(4, 3)
    logits[2, 1] = logits[0, 0] = 5.0
    (rows, cols), = HungarianMatcher(num_points=256)(
        {"pred_logits": logits[None], "pred_masks": masks[None]}, [{"labels": torch.tensor([1, 0]), "masks": tgt}]
    )
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 2, 1: 0}


def test_images_without_targets_match_nothing():
    outputs = {"pred_logits": torch.randn(2, 4, 3), "pred_masks": torch.randn(2, 4, 8, 8)}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}
    one = {"labels": torch.tensor([1]), "masks": torch.ones(1, 32, 32, dtype=torch.bool)}
    res = HungarianMatcher(num_points=16)(outputs, [empty, one])
    assert len(res[0][0]) == 0 and len(res[1][0]) == 1


class PerImageMatcher(HungarianMatcher):
    """The matcher as it was: one `cost_matrix` (matcher_reference.py) per image (the batched costs' reference)."""

    @torch.no_grad()
    def forward(self, outputs, targets):
        from scipy.optimize import linear_sum_assignment

        points = torch.rand(len(targets), self.num_points, 2)  # the batched matcher's draw
        out = []
        for b, t in enumerate(targets):
            if len(t["labels"]) == 0:
                out.append((torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)))
                continue
            cost = cost_matrix(self, outputs["pred_logits"][b], outputs["pred_masks"][b], t["labels"], t["masks"],
                                    points=points[b])
            r, c = linear_sum_assignment(cost.numpy())
            out.append((torch.as_tensor(r, dtype=torch.int64), torch.as_tensor(c, dtype=torch.int64)))
        return out


def _batch(g, b=4, q=6, k=3, h=6, w=8, counts=(3, 0, 5, 1)):
    logits = torch.randn(b, q, k + 1, generator=g)
    masks = torch.randn(b, q, h, w, generator=g) * 3
    # targets smaller than the predictions' extent (padded by the matcher) and of different sizes per image
    targets = [{"labels": torch.randint(0, k, (n,), generator=g),
                "masks": torch.rand(n, 4 * h - (i % 2) * 3, 4 * w - 2, generator=g) > 0.6}
               for i, n in enumerate(counts)]
    return logits, masks, targets


def test_batched_costs_equal_the_per_image_costs():
    g = torch.Generator().manual_seed(3)
    logits, masks, targets = _batch(g)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=3.0, num_points=40)
    points = torch.rand(4, 40, 2, generator=g)
    costs = matcher.batch_costs(logits, masks, targets, points=points)
    for b, t in enumerate(targets):
        assert costs[b].shape == (6, len(t["labels"]))
        if len(t["labels"]):
            want = cost_matrix(matcher, logits[b], masks[b], t["labels"], t["masks"], points=points[b])
            torch.testing.assert_close(costs[b], want, rtol=1e-6, atol=1e-6)


def test_losses_from_batched_and_per_image_matching_are_equal():
    from dgseg.pipeline.model.criterion import SetCriterion

    g = torch.Generator().manual_seed(5)
    logits, masks, targets = _batch(g, counts=(2, 4, 0, 6))
    aux = [{"pred_logits": logits.roll(1, 1), "pred_masks": masks.roll(1, 1)}]
    outputs = {"pred_logits": logits, "pred_masks": masks, "aux_outputs": aux}
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    losses = {}
    for name, cls in [("batched", HungarianMatcher), ("per_image", PerImageMatcher)]:
        crit = SetCriterion(3, cls(2.0, 5.0, 5.0, num_points=64), weights, num_points=64)
        torch.manual_seed(11)  # the same matcher points and loss points in both runs
        losses[name] = crit(outputs, targets)
    assert losses["batched"].keys() == losses["per_image"].keys()
    for k, v in losses["batched"].items():
        assert v.item() == pytest.approx(losses["per_image"][k].item(), rel=1e-6)
