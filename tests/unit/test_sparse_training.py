"""optim.sparse: row-sparse gradients + SparseAdam for large catalogues (training/optim.py, students/base.py).

What is checked, and why it can fail:
1. the densified sparse gradient equals the dense gradient exactly, for every student, with and without DLLM2Rec;
2. with plain SGD, sparse and dense training give identical parameters after N steps;
3. LazyAdam (row-wise Adam) vs Adam: the first step is the same on every row; rows the batch does not touch never move (lazy
   moments), where dense Adam keeps moving rows touched earlier — the documented difference;
4. a short training run with sparse on reaches a metric comparable to dense;
plus exact resume with both optimisers' states, the one-line refusals, sampled softmax by hand, and the streamed
top-k / output-offset rows helpers.
"""
import math

import pytest
import torch

from dllm2rec import losses
from dllm2rec.config import load_config
from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.distill.embedding import attach_embedding_distillation
from dllm2rec.errors import Dllm2recError
from dllm2rec.students.base import build_student
from dllm2rec.training import optim
from dllm2rec.training.trainer import Trainer

BASE = ["train.batch_size=32", "train.eval_batch=256", "train.epochs=2", "train.patience=100"]
DLLM = ["distill.strategy=dllm2rec", "distill.teacher=random:16"]


def _trainer(tmp_path, tiny_dataset, name, *extra):
    cfg = load_config(None, BASE + [f"out_dir={tmp_path}", *extra])
    return Trainer(cfg, tiny_dataset, tmp_path / name, quiet=True)


def _grads(tr, idx, neg):
    tr.model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same dropout masks in both runs
    loss = sum(tr.step_loss(idx, 1, 0, neg).values())
    loss.backward()
    return {n: p.grad for n, p in tr.model.named_parameters() if p.grad is not None}, float(loss.detach())


def _fixed_batch(tr, n_neg=1):
    idx = torch.arange(32)
    neg = losses.sample_negatives(tr.train_seq[idx], tr.train_tgt[idx], tr.ds.n_items, n_neg,
                                  torch.Generator().manual_seed(3))
    return idx, neg


# ------------------------------------------------------------------------------------------------ 1. gradients
@pytest.mark.parametrize("strategy", [[], DLLM], ids=["no-kd", "dllm2rec"])
@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "caser"])
def test_densified_sparse_gradient_equals_dense(tmp_path, tiny_dataset, model, strategy):
    dense = _trainer(tmp_path, tiny_dataset, "d", f"model.name={model}", "loss.n_neg=3", *strategy)
    sparse = _trainer(tmp_path, tiny_dataset, "s", f"model.name={model}", "loss.n_neg=3", "optim.sparse=true",
                      *strategy)
    sparse.model.load_state_dict(dense.model.state_dict())
    idx, neg = _fixed_batch(dense, 3)
    gd, ld = _grads(dense, idx, neg)
    gs, ls = _grads(sparse, idx, neg)
    assert ld == ls
    assert set(gd) == set(gs)
    for n in optim.SPARSE_TABLES:
        assert gs[n].is_sparse and not gd[n].is_sparse, n
        rows = set(gs[n].coalesce().indices()[0].tolist())
        assert set(gd[n].reshape(len(gd[n]), -1).ne(0).any(1).nonzero().flatten().tolist()) <= rows, n
    if not strategy:  # only the rows the loss read are stored: target + negatives
        want = set(torch.cat([dense.train_tgt[idx], neg.reshape(-1)]).tolist())
        assert set(gs["out.weight"].coalesce().indices()[0].tolist()) == want
        assert len(want) < tiny_dataset.n_items
    for n in gd:
        g = gs[n].to_dense() if gs[n].is_sparse else gs[n]
        if strategy and n in ("out.weight", "out.bias"):
            # L_d gathers output rows a second time: autograd adds the two dense gradients (g1 + g2) but
            # concatenates the two sparse ones, whose densifying sums a row's entries in one run — the same
            # numbers added in another order, so equal to float rounding of the table's scale (observed
            # ≤ 2.4e-9 where entries cancel, against gradients of ~1e-3)
            scale = float(gd[n].abs().max())
            torch.testing.assert_close(g, gd[n], rtol=1e-6, atol=1e-6 * scale, msg=lambda m, n=n: f"{n}: {m}")
        else:
            assert torch.equal(g, gd[n]), n
    if strategy:
        assert any(n.startswith("input_offset.proj") for n in gd)  # the projector is trained in both


def test_sampled_softmax_gradient_equal_and_output_offset_rows(tmp_path, tiny_dataset):
    """Output-side embedding distillation: under sparse the offset projects only the batch's unique ids."""
    ed = ["distill.params={ed_side: both}"]
    dense = _trainer(tmp_path, tiny_dataset, "d", "loss.kind=sampled_softmax", "loss.n_neg=4", *DLLM, *ed)
    sparse = _trainer(tmp_path, tiny_dataset, "s", "loss.kind=sampled_softmax", "loss.n_neg=4", *DLLM, *ed,
                      "optim.sparse=true")
    sparse.model.load_state_dict(dense.model.state_dict())
    idx, neg = _fixed_batch(dense, 4)
    gd, ld = _grads(dense, idx, neg)
    gs, ls = _grads(sparse, idx, neg)
    assert ls == pytest.approx(ld, rel=1e-6)
    for n in gd:
        g = gs[n].to_dense() if gs[n].is_sparse else gs[n]
        torch.testing.assert_close(g, gd[n], rtol=1e-5, atol=1e-7, msg=n)
    off = dense.model.output_offset
    ids = torch.tensor([[3, 5, 3], [0, 59, 5]])
    torch.testing.assert_close(off.rows(ids), off()[ids], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------ 2. SGD
def test_sgd_sparse_and_dense_give_identical_parameters(tmp_path, tiny_dataset):
    runs = []
    for sp in (False, True):
        tr = _trainer(tmp_path, tiny_dataset, f"sgd{sp}", "loss.n_neg=2", *(["optim.sparse=true"] if sp else []))
        if sp:
            tr.model.load_state_dict(runs[0][1])
        start = {k: v.clone() for k, v in tr.model.state_dict().items()}
        gen = torch.Generator().manual_seed(5)
        for step in range(6):
            idx = torch.randperm(len(tr.train_tgt), generator=gen)[:32]
            neg = losses.sample_negatives(tr.train_seq[idx], tr.train_tgt[idx], tr.ds.n_items, 2, gen)
            tr.model.zero_grad(set_to_none=True)
            torch.manual_seed(step)
            sum(tr.step_loss(idx, 1, step, neg).values()).backward()
            with torch.no_grad():  # p -= lr·g on the densified gradient: the same arithmetic for both layouts
                for p in tr.model.parameters():  # (torch.optim.SGD's sparse add rounds lr·g apart: ≤ 1 ulp off)
                    if p.grad is not None:
                        p.sub_((p.grad.to_dense() if p.grad.is_sparse else p.grad) * 0.5)
        runs.append((tr.model.state_dict(), start))
    (dense, start), (sparse, _) = runs
    assert not torch.equal(dense["item_emb.weight"], start["item_emb.weight"])  # it did train
    for k in dense:
        assert torch.equal(sparse[k], dense[k]), k


# ------------------------------------------------------------------------------------------------ 3. Adam
def test_sparse_adam_first_step_equals_adam_and_untouched_rows_stay(tmp_path, tiny_dataset):
    dense = _trainer(tmp_path, tiny_dataset, "d")
    sparse = _trainer(tmp_path, tiny_dataset, "s", "optim.sparse=true")
    sparse.model.load_state_dict(dense.model.state_dict())
    assert isinstance(sparse.optimizer, optim.SparseDenseOptimizer)
    assert isinstance(dense.optimizer, torch.optim.Adam)
    w0 = dense.model.out.weight.detach().clone()
    # step 1 on one batch, step 2 on rows 0..3 only (few output rows touched)
    batches = [(torch.arange(32), None), (torch.arange(4), None)]
    touched = []
    for s, (idx, _) in enumerate(batches):
        neg = losses.sample_negatives(dense.train_seq[idx], dense.train_tgt[idx], dense.ds.n_items, 1,
                                      torch.Generator().manual_seed(s))
        rows = torch.unique(torch.cat([dense.train_tgt[idx], neg.reshape(-1)]))
        touched.append(set(rows.tolist()))
        w_before = {}
        for tr in (dense, sparse):
            w_before[id(tr)] = tr.model.out.weight.detach().clone()
            tr.optimizer.zero_grad(set_to_none=True)
            torch.manual_seed(11 + s)
            sum(tr.step_loss(idx, 1, s, neg).values()).backward()
            tr.optimizer.step()
        if s == 0:
            for n, p in dense.model.named_parameters():
                torch.testing.assert_close(dict(sparse.model.named_parameters())[n], p, rtol=1e-6, atol=1e-7,
                                           msg=n)
            moved = (sparse.model.out.weight.detach() != w0).any(1).nonzero().flatten().tolist()
            assert set(moved) == touched[0]
    # step 2: rows touched at step 1 only — Adam moves them (momentum), LazyAdam does not (lazy moments)
    only_first = sorted(touched[0] - touched[1])
    assert only_first
    ws_prev, wd_prev = w_before[id(sparse)], w_before[id(dense)]
    assert torch.equal(sparse.model.out.weight.detach()[only_first], ws_prev[only_first])
    assert (dense.model.out.weight.detach()[only_first] != wd_prev[only_first]).any(1).all()
    never = sorted(set(range(dense.ds.n_items)) - touched[0] - touched[1])
    assert torch.equal(sparse.model.out.weight.detach()[never], w0[never])


# ------------------------------------------------------------------------------------------------ 4. quality
def test_short_run_sparse_reaches_dense_metric(tmp_path):
    ds = make_synthetic(n_items=1682, n_users=943, seq_len=30, seed=1)  # ML-100K's item/user counts, 15k rows
    ov = ["train.epochs=5", "train.batch_size=256", "train.eval_batch=1024", "loss.n_neg=8", "optim.lr=0.005",
          f"out_dir={tmp_path}"]
    out = {}
    for name, extra in {"dense": [], "sparse": ["optim.sparse=true"],
                        "sparse-ssm": ["optim.sparse=true", "loss.kind=sampled_softmax"]}.items():
        cfg = load_config(None, ov + extra)
        out[name] = Trainer(cfg, ds, tmp_path / name, quiet=True).fit()["test"]["test/full/NDCG@20"]
    chance = 20 / 1682 / math.log2(22)  # NDCG@20 upper bound of random ranking, roughly
    assert out["dense"] > 10 * chance
    # loose: lazy moments change the trajectory (seen: dense .434, sparse .419, sparse + sampled softmax .425)
    assert out["sparse"] >= 0.85 * out["dense"], out
    assert out["sparse-ssm"] >= 0.85 * out["dense"], out


# ------------------------------------------------------------------------------------------------ resume
def test_sparse_resume_equals_uninterrupted(tmp_path, tiny_dataset):
    ov = ["optim.sparse=true", "loss.kind=sampled_softmax", "loss.n_neg=4", "train.epochs=4", *DLLM]
    full = _trainer(tmp_path, tiny_dataset, "a", *ov).fit()
    part = _trainer(tmp_path, tiny_dataset, "b", *ov)
    assert part.fit(max_epochs_this_call=2)["status"] == "paused"
    st = torch.load(tmp_path / "b" / "last" / "trainer_state.pt", weights_only=True)
    assert set(st["optimizer"]) == {"dense", "sparse"} and st["optimizer"]["sparse"]["state"]
    resumed = _trainer(tmp_path, tiny_dataset, "b", *ov).fit(resume=True)
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["test"] == full["test"]
    la = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [x.split('"train/seconds"')[0] for x in la] == [x.split('"train/seconds"')[0] for x in lb]


def test_sparse_optimizer_refuses_a_dense_state(tmp_path, tiny_dataset):
    dense = _trainer(tmp_path, tiny_dataset, "d")
    sparse = _trainer(tmp_path, tiny_dataset, "s", "optim.sparse=true")
    with pytest.raises(Dllm2recError, match="optim.sparse=false"):
        sparse.optimizer.load_state_dict(dense.optimizer.state_dict())


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("extra, match", [
    (["loss.kind=ce"], "loss.kind=ce"),
    (["loss.dros_alpha=0.5"], "loss.dros_alpha"),
    (["optim.weight_decay=0.01"], "weight_decay"),
    ([*DLLM, "distill.params={dros_alpha: 0.5}"], "dros_alpha"),
    (["distill.strategy=rd", "distill.teacher=random:16", "distill.params={weighting: dynamic}"], "weighting"),
])
def test_sparse_refuses_what_it_cannot_train(tmp_path, tiny_dataset, extra, match):
    with pytest.raises(Dllm2recError, match=match) as e:
        _trainer(tmp_path, tiny_dataset, "x", "optim.sparse=true", *extra)
    assert "\n" not in str(e.value)


def test_sparse_refused_under_ddp(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Dllm2recError, match="not supported under DDP"):
        _trainer(tmp_path, tiny_dataset, "x", "optim.sparse=true")


def test_a_dense_gradient_on_a_sparse_table_is_one_line(tmp_path, tiny_dataset):
    tr = _trainer(tmp_path, tiny_dataset, "x", "optim.sparse=true")
    tr.optimizer.zero_grad()
    state = tr.model.encode(tr.train_seq[:8], tr.train_len[:8])
    losses.ce_loss(tr.model.score_all(state), tr.train_tgt[:8]).backward()  # a full softmax: dense gradient
    with pytest.raises(Dllm2recError, match="out.weight got a dense gradient"):
        tr.optimizer.step()


def test_sparse_off_keeps_the_plain_optimizer(tmp_path, tiny_dataset):
    tr = _trainer(tmp_path, tiny_dataset, "x")
    assert type(tr.optimizer) is torch.optim.Adam and not tr.model.item_emb.sparse
    assert set(tr.optimizer.state_dict()) == {"state", "param_groups"}


# ------------------------------------------------------------------------------------------------ helpers
def test_sampled_softmax_by_hand():
    pos = torch.tensor([2.0, 0.0])
    neg = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # row 0: -log(e^2 / (e^2 + e^1 + e^0)); row 1: -log(1/3)
    r0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + 1.0))
    want = (r0 + math.log(3.0)) / 2
    assert float(losses.sampled_softmax_loss(pos, neg)) == pytest.approx(want, rel=1e-6)
    # a constant logQ shift of every logit of a row changes nothing (uniform sampling)
    assert float(losses.sampled_softmax_loss(pos - 3.0, neg - 3.0)) == pytest.approx(want, rel=1e-6)


def test_topk_from_state_streams_the_same_ids():
    torch.manual_seed(0)
    m = build_student("sasrec", 1000, max_len=5, dim=8)
    attach_embedding_distillation(m, torch.randn(1000, 12), side="output")
    state = torch.randn(6, 8)
    want = m.score_all(state).topk(10, dim=1).indices
    for chunk in (None, 7, 128):
        got = m.topk_from_state(state, 10, chunk)
        assert torch.equal(got.sort(1).values, want.sort(1).values), chunk


def test_sparse_dllm2rec_step_never_scores_the_whole_catalogue(tmp_path, tiny_dataset, monkeypatch):
    """Under optim.sparse the consistency top-K is streamed (StepContext.student_topk): a DLLM2Rec step (no DROS)
    never calls score_all, and it keeps the same consistency weights as the dense path's full-score top-K."""
    tr = _trainer(tmp_path, tiny_dataset, "s", "optim.sparse=true", *DLLM)
    idx, neg = _fixed_batch(tr)
    torch.manual_seed(7)
    want = sum(tr.step_loss(idx, 1, 0, neg).values())  # the reference value

    def boom(*a, **k):
        raise AssertionError("score_all called under optim.sparse")

    monkeypatch.setattr(tr.model, "score_all", boom)
    torch.manual_seed(7)
    got = sum(tr.step_loss(idx, 1, 0, neg).values())
    torch.testing.assert_close(got, want)
