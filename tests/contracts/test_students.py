"""Contract every registered student must satisfy (the implicit-style shared test)."""
import inspect

import pytest
import torch
from torch import nn

from dllm2rec.errors import ConfigError
from dllm2rec.registry import available, get_student
from dllm2rec.students import build_student
from dllm2rec.students.base import StudentParams
from dllm2rec.students.checkpoint import load_student, save_student

N, L = 30, 6
STUDENTS = available("student")


def _batch():
    g = torch.Generator().manual_seed(0)
    seq = torch.full((4, L), N)
    lens = torch.tensor([1, 3, 6, 2])
    for i, n in enumerate(lens.tolist()):
        seq[i, :n] = torch.randint(0, N, (n,), generator=g)
    return seq, lens


class _Offset(nn.Module):
    """A hook like collaborative embedding distillation: a learnable offset per item, zero at PAD."""

    def __init__(self, dim):
        super().__init__()
        self.table = nn.Parameter(torch.randn(N + 1, dim))

    def forward(self, ids):
        return self.table[ids] * (ids != N).unsqueeze(-1)


def test_builtins_registered():
    assert {"sasrec", "gru4rec", "caser"} <= set(STUDENTS)


@pytest.mark.parametrize("name", STUDENTS)
def test_typed_params_match_the_constructor(name):
    """params_cls is the one typed list of a student's hyper-parameters: same names and defaults as the
    constructor's keywords, and every field survives init_kwargs (so checkpoints rebuild the architecture)."""
    cls = get_student(name)
    assert issubclass(cls.params_cls, StudentParams) and cls.params_cls is not StudentParams
    sig = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items() if k not in ("self", "n_items")}
    fields = {k: f.get_default(call_default_factory=True) for k, f in cls.params_cls.model_fields.items()}
    norm = lambda d: {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # noqa: E731
    assert norm(sig) == norm(fields)
    m = build_student(name, N, max_len=L)
    assert set(m.init_kwargs()) - {"name", "n_items"} == set(fields)


@pytest.mark.parametrize("name", STUDENTS)
def test_bad_params_are_one_line_naming_the_field(name):
    with pytest.raises(ConfigError, match=r"field 'dim'.*greater than or equal to 1"):
        build_student(name, N, dim=0)
    with pytest.raises(ConfigError, match=r"field 'no_such_option'"):
        build_student(name, N, no_such_option=1)


@pytest.mark.parametrize("name", STUDENTS)
def test_shapes_and_score_items_agree(name):
    torch.manual_seed(0)
    m = build_student(name, N, max_len=L).eval()
    seq, lens = _batch()
    state = m.encode(seq, lens)
    assert state.shape == (4, m.hidden_dim)
    full = m.score_all(state)
    assert full.shape == (4, N)
    items = torch.tensor([[0, 5], [1, 2], [29, 3], [7, 7]])
    assert torch.allclose(m.score_items(state, items), full.gather(1, items), atol=1e-6)
    assert torch.allclose(m.score_items(state, items[:, 0]), full.gather(1, items[:, :1])[:, 0], atol=1e-6)


@pytest.mark.parametrize("name", STUDENTS)
def test_output_ignores_what_lies_after_len(name):
    torch.manual_seed(0)
    m = build_student(name, N, max_len=L).eval()
    seq, lens = _batch()
    a = m(seq, lens)
    # the state must depend on the history: change a real item of row 1
    seq2 = seq.clone()
    seq2[1, 0] = (seq2[1, 0] + 1) % N
    assert not torch.allclose(m(seq2, lens)[1], a[1])
    # and the batch composition must not leak across rows
    b = m(seq[1:2], lens[1:2])
    assert torch.allclose(a[1:2], b, atol=1e-5)
    # real item ids (not PAD) after len change nothing: the state is read at len-1, not at the last position
    g = torch.Generator().manual_seed(1)
    junk = seq.clone()
    for i, n in enumerate(lens.tolist()):
        junk[i, n:] = torch.randint(0, N, (L - n,), generator=g)
    assert (junk != seq).any()
    assert torch.allclose(m(junk, lens), a, atol=1e-5)


@pytest.mark.parametrize("name", STUDENTS)
def test_input_offset_hook_and_gradients(name):
    torch.manual_seed(0)
    m = build_student(name, N, max_len=L).eval()
    seq, lens = _batch()
    before = m(seq, lens)
    m.input_offset = _Offset(m.dim)
    after = m(seq, lens)
    assert not torch.allclose(before, after)
    after.sum().backward()
    assert m.input_offset.table.grad is not None and m.input_offset.table.grad.abs().sum() > 0
    assert m.item_emb.weight.grad[seq[0, 0]].abs().sum() > 0


@pytest.mark.parametrize("name", STUDENTS)
def test_checkpoint_roundtrip(name, tmp_path):
    torch.manual_seed(0)
    m = build_student(name, N, max_len=L).eval()
    seq, lens = _batch()
    save_student(m, tmp_path / "ck", meta={"x": 1})
    m2, info = load_student(tmp_path / "ck")
    assert info["meta"]["x"] == 1 and type(m2) is type(m)
    assert torch.allclose(m(seq, lens), m2(seq, lens))


@pytest.mark.parametrize("name", STUDENTS)
def test_no_hidden_teacher_dimension(name):
    # any embedding dim works (the teacher's dimension is never hard-coded anywhere)
    for dim in (16, 48):
        m = build_student(name, N, max_len=L, dim=dim)
        seq, lens = _batch()
        assert m(seq, lens).shape == (4, N)


@pytest.mark.parametrize("name", STUDENTS)
def test_learns_a_simple_pattern(name, tmp_path):
    """implicit's shared-mixin idea: every registered student, trained briefly through the real trainer on walks
    that mostly step to the next item of a ring, must rank the next item far above chance and above popularity."""
    from dllm2rec.config import RunConfig
    from dllm2rec.data.synthetic import make_synthetic
    from dllm2rec.evaluation.baselines import evaluate_baseline
    from dllm2rec.training.trainer import Trainer

    ds = make_synthetic(n_items=50, n_users=2000, seq_len=12, p_follow=0.9, seed=0)
    cfg = RunConfig.model_validate({"model": {"name": name, "dim": 32},
                                    "loss": {"kind": "ce"}, "optim": {"lr": 0.005},
                                    "train": {"epochs": 8, "patience": 8, "ks": [5], "num_threads": 1, "seed": 0,
                                              "batch_size": 128}})
    res = Trainer(cfg, ds, tmp_path / name, quiet=True).fit()
    hr = res["valid"]["valid/full/HR@5"]
    pop = evaluate_baseline("popularity", ds, "valid", [5])["full/HR@5"]
    assert hr > max(3 * 5 / ds.n_items, pop + 0.2), (name, hr, pop)
