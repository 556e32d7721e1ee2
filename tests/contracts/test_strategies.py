"""Contract of every registered distillation strategy (and the main parameter variants of dllm2rec)."""
import numpy as np
import pytest
import torch

from dllm2rec.config import RunConfig
from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.distill.base import StepContext
from dllm2rec.errors import ConfigError
from dllm2rec.registry import available, get_strategy
from dllm2rec.students.base import build_student
from dllm2rec.teachers.controls import make_control
from dllm2rec import losses
from dllm2rec.students.checkpoint import load_student, save_student
from dllm2rec.training.trainer import Trainer


@pytest.fixture(scope="module")
def ds():
    return make_synthetic(n_items=60, n_users=40, seq_len=14, seed=3)


@pytest.fixture(scope="module")
def teacher(ds):
    return make_control("synthetic:0.8:0.6", ds, seed=1)  # 60 % of the rows answered


VARIANTS = [(name, {}) for name in available("strategy")] + [
    ("dllm2rec", {"variant": "paper", "neg_term": True}),
    ("dllm2rec", {"dros_alpha": 0.5}),
    ("dllm2rec", {"confidence_source": "target", "confidence_norm": "zscore"}),
    ("dllm2rec", {"projector": "mlp", "ed_side": "both"}),
    ("dllm2rec", {"ed_side": "output"}),
    ("dllm2rec", {"offset": False}),
    ("dllm2rec", {"use_position": False, "use_confidence": False, "use_consistency": False}),
    ("rd", {"weighting": "dynamic"}),
    ("hint", {"direction": "teacher"}),
]


def _step(model, strat, ds, idx, gen=None):
    tr = ds["train"]
    seq = torch.tensor(tr.seq[idx])
    lens = torch.tensor(tr.len[idx])
    tgt = torch.tensor(tr.target[idx])
    neg = losses.sample_negatives(seq, tgt, ds.n_items, 1, gen or torch.Generator().manual_seed(0))
    state = model.encode(seq, lens)
    ctx = StepContext(model, state, seq, lens, tgt, torch.tensor(tr.row_id[idx]), neg, epoch=2, step=0)
    return ctx, strat.loss(ctx)


@pytest.mark.parametrize("name,params", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_strategy_contract(name, params, ds, teacher, tmp_path):
    torch.manual_seed(0)
    model = build_student("sasrec", ds.n_items, max_len=ds.max_len, dim=16)
    cls = get_strategy(name)
    strat = cls(params, ds, teacher if cls.needs_teacher else None)
    strat.attach(model)
    assert isinstance(strat.describe(), dict)
    model.train()
    ctx, terms = _step(model, strat, ds, np.arange(32))
    for k, v in terms.items():
        assert v.dim() == 0 and torch.isfinite(v), (k, v)
    if terms:
        sum(terms.values()).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), "no gradient reached the student"
    # checkpoint round trip: a distilled student reloads (hooks included) with identical scores
    save_student(model, tmp_path / "ck")
    model.eval()
    loaded, _ = load_student(tmp_path / "ck")
    tr = ds["train"]
    seq, lens = torch.tensor(tr.seq[:20]), torch.tensor(tr.len[:20])
    with torch.no_grad():
        assert torch.equal(model(seq, lens), loaded(seq, lens))


@pytest.mark.parametrize("name", ["dllm2rec", "rank-only", "dllm2rec-paper", "rd"])
def test_uncovered_rows_get_only_the_plain_loss(name, ds, teacher):
    model = build_student("sasrec", ds.n_items, max_len=ds.max_len, dim=16)
    strat = get_strategy(name)({"use_embedding": False} if name.startswith("dllm2rec") else {}, ds, teacher)
    strat.attach(model)
    tr = ds["train"]
    unc = np.nonzero(~teacher.covered[tr.row_id])[0][:32]
    cov = np.nonzero(teacher.covered[tr.row_id])[0][:32]
    assert len(unc) and len(cov)
    _, terms = _step(model, strat, ds, unc)
    assert all(float(v.detach()) == 0.0 for v in terms.values()), terms
    _, terms = _step(model, strat, ds, cov)
    assert any(float(v.detach()) > 0.0 for v in terms.values()), terms


def test_output_side_refused_for_caser(ds, teacher):
    model = build_student("caser", ds.n_items, max_len=ds.max_len, dim=16)
    strat = get_strategy("dllm2rec")({"ed_side": "output"}, ds, teacher)
    with pytest.raises(ConfigError, match="hidden_dim"):
        strat.attach(model)


def test_bad_params_are_refused(ds, teacher):
    with pytest.raises(ConfigError, match="unknown parameter"):
        get_strategy("dllm2rec")({"lamda": 0.5}, ds, teacher)
    with pytest.raises(ConfigError, match="K=50"):
        get_strategy("dllm2rec")({"K": 50}, ds, teacher)
    with pytest.raises(ConfigError, match="confidence_norm"):
        get_strategy("dllm2rec")({"confidence_norm": "log"}, ds, teacher)


def test_wo_offset_zeroes_and_freezes_id_embedding(ds, teacher):
    model = build_student("gru4rec", ds.n_items, max_len=ds.max_len, dim=16)
    get_strategy("embed-only")({"offset": False}, ds, teacher).attach(model)
    assert float(model.item_emb.weight.abs().sum()) == 0 and not model.item_emb.weight.requires_grad


def test_input_offset_projects_unique_ids_and_is_zero_at_pad(ds, teacher):
    model = build_student("sasrec", ds.n_items, max_len=ds.max_len, dim=16)
    get_strategy("embed-only")({}, ds, teacher).attach(model)
    hook = model.input_offset
    calls = []
    hook.proj.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    seq = torch.tensor([[1, 2, 1, ds.n_items], [2, 2, ds.n_items, ds.n_items]])
    out = hook(seq)
    assert calls == [3]  # ids {1, 2, PAD}, once
    assert out.shape == (2, 4, 16) and torch.all(out[0, 3] == 0) and torch.equal(out[0, 0], out[0, 2])


@pytest.mark.parametrize("teacher_spec", ["random", "synthetic:0.9:0.5"])
def test_trainer_runs_with_control_teachers(ds, teacher_spec, tmp_path):
    cfg = RunConfig.model_validate({
        "model": {"name": "gru4rec", "dim": 16},
        "train": {"epochs": 1, "batch_size": 64, "ks": [20]},
        "loss": {"dros_alpha": 0.5},
        "distill": {"strategy": "dllm2rec", "teacher": teacher_spec, "params": {"dros_alpha": 0.5}}})
    res = Trainer(cfg, ds, run_dir=tmp_path / "run", quiet=True).fit()
    assert np.isfinite(res["test"][next(iter(res["test"]))])
    assert res["strategy"]["strategy"] == "dllm2rec"


def test_llm_sized_teacher_uses_bf16_table_and_round_trips(ds, tmp_path):
    big = make_control("random:1024", ds, seed=0)
    model = build_student("sasrec", ds.n_items, max_len=ds.max_len, dim=16)
    strat = get_strategy("dllm2rec")({"ed_precision": "bfloat16"}, ds, big)  # auto depends on the CPU's bf16
    strat.attach(model)
    assert model.input_offset.teacher_emb.dtype == torch.bfloat16
    model.train()
    _, terms = _step(model, strat, ds, np.arange(16))
    sum(terms.values()).backward()
    assert model.input_offset.proj.weight.grad is not None
    assert model.input_offset.proj.weight.dtype == torch.float32
    save_student(model, tmp_path / "ck")
    model.eval()
    loaded, info = load_student(tmp_path / "ck")
    assert info["hooks"]["input_offset"]["precision"] == "bfloat16"
    tr = ds["train"]
    with torch.no_grad():
        assert torch.equal(model(torch.tensor(tr.seq[:8]), torch.tensor(tr.len[:8])),
                           loaded(torch.tensor(tr.seq[:8]), torch.tensor(tr.len[:8])))


@pytest.mark.parametrize("student", ["gru4rec", "caser"])
def test_dllm2rec_on_every_student(student, ds, teacher, tmp_path):
    model = build_student(student, ds.n_items, max_len=ds.max_len, dim=16)
    strat = get_strategy("dllm2rec")({"dros_alpha": 0.5}, ds, teacher)
    strat.attach(model)
    model.train()
    _, terms = _step(model, strat, ds, np.arange(32))
    assert set(terms) == {"rd", "rd_dro"} and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert model.input_offset.proj.weight.grad is not None
    save_student(model, tmp_path / "ck")
    model.eval()
    loaded, _ = load_student(tmp_path / "ck")
    tr = ds["train"]
    with torch.no_grad():
        assert torch.equal(model(torch.tensor(tr.seq[:8]), torch.tensor(tr.len[:8])),
                           loaded(torch.tensor(tr.seq[:8]), torch.tensor(tr.len[:8])))


@pytest.mark.parametrize("name", available("strategy"))
def test_typed_params_for_every_strategy(name, ds, teacher):
    """Each registered strategy pairs with a typed params class (peft-style): its defaults are what describe()
    reports, an unknown name and an out-of-range value are one line naming the parameter."""
    from dllm2rec.distill.base import StrategyParams

    cls = get_strategy(name)
    assert issubclass(cls.params_cls, StrategyParams)
    s = cls({}, ds, teacher)
    fields = set(cls.params_cls.model_fields)
    assert set(s.describe()) - {"strategy", "gate_fit"} == fields
    if name != "none":
        assert fields, name
    with pytest.raises(ConfigError, match=rf"strategy '{name}': unknown parameter 'no_such_param'"):
        cls({"no_such_param": 1}, ds, teacher)
    bounded = next((f for f, info in cls.params_cls.model_fields.items()
                    if any(getattr(m, "ge", None) == 0.0 or getattr(m, "gt", None) == 0.0 for m in info.metadata)),
                   None)
    if bounded is not None:
        with pytest.raises(ConfigError, match=rf"strategy '{name}': {bounded}: Input should be greater"):
            cls({bounded: -1.0}, ds, teacher)


def test_one_ablation_table():
    """The grid runner's ablation methods and the report's labels come from the strategy's own table, and every
    switch in it is a boolean parameter of DLLM2Rec whose default is on."""
    from dllm2rec.distill.strategies import ABLATION_SWITCHES, DLLM2RecParams
    from dllm2rec.evaluation.runs import derive_label
    from dllm2rec.experiments import ABLATIONS, METHODS

    fields = DLLM2RecParams.model_fields
    assert all(fields[f].annotation is bool and fields[f].default is True for f in ABLATION_SWITCHES)
    assert ABLATIONS == [f"dllm2rec-{s}" for s in ABLATION_SWITCHES.values()]
    for flag, suffix in ABLATION_SWITCHES.items():
        assert METHODS[f"dllm2rec-{suffix}"][1][f"distill.params.{flag}"] is False
        res = {"strategy": {"strategy": "dllm2rec", flag: False}, "config": {"distill": {"teacher": "t"}}}
        assert derive_label(res) == f"dllm2rec-{suffix}"
