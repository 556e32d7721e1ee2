import math

import numpy as np
import torch

from dllm2rec.evaluation.metrics import metrics_from_ranks, ranks_from_topk, target_ranks


def test_metrics_hand_computed():
    # ranks 0, 1, 4, 25 (0-based) -> HR@1 = 1/4, HR@5 = 3/4, HR@20 = 3/4
    m = metrics_from_ranks([0, 1, 4, 25], ks=(1, 5, 20))
    assert m["full/HR@1"] == 0.25
    assert m["full/HR@5"] == 0.75
    assert m["full/HR@20"] == 0.75
    # NDCG@5 = (1/log2(2) + 1/log2(3) + 1/log2(6) + 0) / 4
    expect = (1.0 + 1 / math.log2(3) + 1 / math.log2(6)) / 4
    assert abs(m["full/NDCG@5"] - expect) < 1e-12
    assert abs(m["full/NDCG@1"] - 0.25) < 1e-12


def test_infinite_rank_is_a_miss():
    m = metrics_from_ranks([np.inf, 0], ks=(10,))
    assert m["full/HR@10"] == 0.5 and m["full/NDCG@10"] == 0.5


def test_target_ranks_pessimistic_ties():
    s = torch.tensor([[0.1, 0.5, 0.5, 0.2], [3.0, 2.0, 1.0, 0.0]])
    assert target_ranks(s, torch.tensor([1, 0])).tolist() == [1, 0]
    assert target_ranks(s, torch.tensor([2, 3])).tolist() == [1, 3]
    # a constant model ranks every target last
    c = torch.zeros(2, 5)
    assert target_ranks(c, torch.tensor([0, 4])).tolist() == [4, 4]


def test_ranks_from_topk():
    ids = np.array([[3, 1, 2], [0, 1, 2]])
    r = ranks_from_topk(ids, np.array([2, 5]))
    assert r[0] == 2 and np.isinf(r[1])


def test_protocol_ranks_ties_against_the_target_in_both_paths():
    """Ties count against the target (pessimistic), in the dense path and the item-chunked (streaming) path alike.
    Hand-checked: scores [3, 5, 5, 5, 1, 0]; a target scoring 5 ties with two others -> rank 2 (0-based); all
    scores equal -> rank N-1; the top item alone -> rank 0 if unique."""
    import numpy as np
    import torch

    from dllm2rec.data.schema import make_split
    from dllm2rec.evaluation.baselines import ConstantScorer
    from dllm2rec.evaluation.protocol import rank_targets

    n = 6
    targets = np.array([1, 2, 0, 4, 5])
    split = make_split([[0]] * 5, targets.tolist(), pad=n, max_len=3)
    tied = ConstantScorer(np.array([3, 5, 5, 5, 1, 0], dtype=np.float64))
    flat = ConstantScorer(np.zeros(n))
    for chunk in (None, 2, 4):
        assert rank_targets(tied, split, item_chunk=chunk).tolist() == [2, 2, 3, 4, 5], chunk
        assert rank_targets(flat, split, item_chunk=chunk).tolist() == [n - 1] * 5, chunk
    assert torch.is_tensor(rank_targets(tied, split))
