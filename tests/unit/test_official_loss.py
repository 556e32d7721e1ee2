"""The ``official`` DLLM2Rec variant reproduces the official script's distillation loss on a fixed tiny batch.

Expected numbers are written down from the spec's formulas (§1.2.5), by hand; they were cross-checked with a
ten-line plain-``math`` script that does not import dllm2rec. The batch (B = 2, N = 4 items, K = 2):

    scores ŷ  row 0: [ 2.0,  0.5, -1.0, 0.3]   candidates [0, 1]  distances [0, 1]  negative item 3 (ŷ = 0.3)
              row 1: [-0.5, -1.0,  1.0, 0.2]   candidates [1, 2]  distances [2, 2]  negative item 0 (ŷ = -0.5)
    student top-2: row 0 {0, 1}, row 1 {2, 3}

Weights (γ = .3/.5/.1, β = 1, raw confidence):
    w_rank = [e^-1, e^-2]/Σ = [.731059, .268941]
    row 0: w_conf = [.731059, .268941], w_com = [1, 1]      -> .3wr+.5wc+.1wo = [.684847, .315153] (sums to 1)
    row 1: w_conf = [.5, .5],           w_com = [1e-8, 1]   -> [.469318, .430682] / .9 = [.521464, .478536]
Per-term losses ℓ = −log σ(ŷ_c) − log σ(1 − ŷ_neg):
    row 0: −log σ(2) = .126928, −log σ(.5) = .474077, −log σ(1 − .3) = .403187
    row 1: −log σ(−1) = 1.313262, −log σ(1) = .313262, −log σ(1 + .5) = .201413
    L_RD = ½[.684847(.530115) + .315153(.877264) + .521464(1.514675) + .478536(.514675)] = .837829
DRO with ps = [1, .5, .5, 1], β_dro = 1:  dro_bc = log(Σ_j e^{ps_j ŷ_j²} − e^{ps_c ŷ_c²} + e^{ps_c (ŷ_c − 1)²})
    row 0: Σ = e^4 + e^.125 + e^.5 + e^.09 = 58.474193 -> c=0: log(58.474193 − e^4 + e^1) = 1.886210
                                                          c=1: log(58.474193) = 4.068586   ((.5−1)² = .5²)
    row 1: Σ = e^.25 + e^.5 + e^.5 + e^.04 = 5.622278  -> c=1: log(5.622278 − e^.5 + e^2) = 2.430328
                                                          c=2: log(5.622278 − e^.5 + 1) = 1.604135
    broadcast bug: Σ_k mean_b(w_bk)·mean_b(dro_bk) = .603155·2.158269 + .396845·2.836360 = 2.427366
Total added to the student loss: λ(L_RD + α·DRO) = .7 (.837829 + .5 · 2.427366) = 1.436058
"""
import numpy as np
import torch
from torch import nn

from dllm2rec.distill import ranking, weights
from dllm2rec.distill.base import StepContext
from dllm2rec.distill.strategies import DLLM2RecStrategy
from dllm2rec.teachers.artifacts import TeacherArtifacts

SCORES = [[2.0, 0.5, -1.0, 0.3], [-0.5, -1.0, 1.0, 0.2]]
CAND = [[0, 1], [1, 2]]
DIST = [[0.0, 1.0], [2.0, 2.0]]
NEG = [[3], [0]]
PS = [1.0, 0.5, 0.5, 1.0]
L_RD = 0.83782904
DRO = 2.42736592
TOTAL = 1.43605840


class FixedScores(nn.Module):
    """A 'student' whose state is its score matrix."""

    n_items = 4

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(SCORES))

    def score_all(self, state):
        return state

    def score_items(self, state, items):
        return state.gather(1, items)


def test_official_pieces_by_hand():
    s = torch.tensor(SCORES)
    cand = torch.tensor(CAND)
    wp = weights.position_weights(2)
    wc = weights.confidence_weights(torch.tensor(DIST), "raw")
    wo = weights.consistency_weights(cand, weights.student_topk(s, 2))
    w = weights.combine(wp, wc, wo, 0.3, 0.5, 0.1)
    assert torch.allclose(w, torch.tensor([[0.684847, 0.315153], [0.521464, 0.478536]]), atol=1e-6)
    pos = s.gather(1, cand)
    neg = s.gather(1, torch.tensor(NEG))
    assert abs(float(ranking.official_ranking_loss(pos, neg, w)) - L_RD) < 1e-5
    dro = ranking.dro_candidate_terms(s, cand, torch.tensor(PS, dtype=torch.float64), 1.0)
    assert torch.allclose(dro, torch.tensor([[1.886210, 4.068586], [2.430328, 1.604135]]), atol=1e-5)
    assert abs(float(ranking.official_dro_part(w, dro)) - DRO) < 1e-5


def test_official_strategy_total_on_fixed_batch():
    art = TeacherArtifacts.from_rankings(np.zeros((4, 3), np.float32), np.array(CAND), np.array(DIST, np.float32))
    strat = DLLM2RecStrategy({"variant": "official", "K": 2, "confidence_norm": "raw", "lam": 0.7,
                              "dros_alpha": 0.5, "use_embedding": False}, None, art)
    strat.ps = torch.tensor(PS, dtype=torch.float64)  # the propensities are the trainer's (tested with the losses)
    model = FixedScores()
    ctx = StepContext(model, model.s, torch.zeros(2, 1, dtype=torch.long), torch.ones(2, dtype=torch.long),
                      torch.tensor([2, 3]), torch.tensor([0, 1]), torch.tensor(NEG))
    terms = strat.loss(ctx)
    assert abs(float(terms["rd"].detach()) - 0.7 * L_RD) < 1e-5
    assert abs(float(terms["rd_dro"].detach()) - 0.7 * 0.5 * DRO) < 1e-5
    total = sum(terms.values())
    assert abs(float(total.detach()) - TOTAL) < 1e-5
    total.backward()
    assert model.s.grad is not None and torch.isfinite(model.s.grad).all()


def test_uncovered_rows_contribute_nothing():
    art = TeacherArtifacts.from_rankings(np.zeros((4, 3), np.float32), np.array([CAND[0], [-1, -1]]),
                                         np.array([DIST[0], [np.nan, np.nan]], np.float32),
                                         covered=np.array([True, False]))
    strat = DLLM2RecStrategy({"K": 2, "confidence_norm": "raw", "use_embedding": False, "lam": 1.0}, None, art)
    model = FixedScores()
    ctx = StepContext(model, model.s, torch.zeros(2, 1, dtype=torch.long), torch.ones(2, dtype=torch.long),
                      torch.tensor([2, 3]), torch.tensor([0, 1]), torch.tensor(NEG))
    rd = strat.loss(ctx)["rd"]
    # row 0 alone, still divided by B = 2: ½[.684847(.530115) + .315153(.877264)] = .319760
    assert abs(float(rd.detach()) - 0.5 * (0.684847 * 0.530115 + 0.315153 * 0.877264)) < 1e-5
    rd.backward()
    assert torch.all(model.s.grad[1] == 0)


def test_paper_variant_positive_only_and_correct_negative():
    s = torch.tensor(SCORES)
    pos = s.gather(1, torch.tensor(CAND))
    w = torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    # ½[.6(.126928) + .4(.474077) + .5(1.313262) + .5(.313262)] = ½(1.079050) = .539525
    assert abs(float(ranking.paper_ranking_loss(pos, w)) - 0.539525) < 1e-5
    # + the correct negative −log(1 − σ(ŷ_neg)) = softplus(ŷ_neg): row 0 log(1+e^.3) = .854355, row 1 .474077
    neg = s.gather(1, torch.tensor(NEG))
    assert abs(float(ranking.paper_ranking_loss(pos, w, neg=neg)) - (0.539525 + 0.5 * (0.854355 + 0.474077))) < 1e-5
