"""The projector's live-column path (distill/embedding.py): a teacher table padded with zero columns (``teacher
export --pad-to 4096``) is projected through its non-zero columns only — the same outputs, the same gradients (the
dead columns' gradient is exactly 0 either way), hence the same Adam steps."""
import torch

from dllm2rec.distill.embedding import TeacherInputOffset, _table


def _padded(n=50, live=6, width=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.zeros(n, width)
    cols = torch.randperm(width, generator=g)[:live]
    z[:, cols] = torch.randn(n, live, generator=g)
    z[3] = 0.0  # a row that is all zero must not hide its columns
    return z, cols


def _pair(z, projector="linear"):
    torch.manual_seed(1)
    a = TeacherInputOffset(_table(z), 8, weight=0.3, projector=projector, mlp_hidden=16)
    b = TeacherInputOffset(_table(z), 8, weight=0.3, projector=projector, mlp_hidden=16)
    b.load_state_dict(a.state_dict())
    return a, b


def _reference(m, ids):
    """The plain path: project the full rows, PAD zeroed, times the weight."""
    p = m._project(m.teacher_emb[ids])
    return p * (ids != m.n_items).unsqueeze(-1).to(p.dtype) * m.weight


def test_live_columns_found():
    z, cols = _padded()
    m, _ = _pair(z)
    assert sorted(m._live_columns().tolist()) == sorted(cols.tolist())
    dense = TeacherInputOffset(_table(torch.randn(20, 16)), 4)
    assert dense._live_columns() is None  # a dense table takes the plain path


def test_same_output_and_gradients_as_full_projection():
    z, cols = _padded()
    for projector in ("linear", "mlp"):
        fast, ref = _pair(z, projector)
        ids = torch.tensor([[0, 5, 5, 50], [7, 3, 49, 50]])  # 50 = PAD
        out_f, out_r = fast(ids), _reference(ref, ids)
        torch.testing.assert_close(out_f, out_r, rtol=1e-6, atol=1e-7)
        g = torch.randn_like(out_f)
        (out_f * g).sum().backward()
        (out_r * g).sum().backward()
        for (n, pf), (_, pr) in zip(fast.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(pf.grad, pr.grad, rtol=1e-6, atol=1e-7, msg=n)
        first = fast.proj if projector == "linear" else fast.proj[0]
        dead = torch.ones(z.shape[1], dtype=torch.bool)
        dead[cols] = False
        assert torch.count_nonzero(first.weight.grad[:, dead]) == 0


def test_adam_steps_agree():
    z, _ = _padded()
    fast, ref = _pair(z)
    of, orf = torch.optim.Adam(fast.parameters(), 1e-2), torch.optim.Adam(ref.parameters(), 1e-2)
    ids = torch.tensor([[1, 2, 3], [4, 4, 50]])
    for _ in range(5):
        for m, o, f in ((fast, of, fast), (ref, orf, None)):
            o.zero_grad()
            out = f(ids) if f is not None else _reference(m, ids)
            out.square().sum().backward()
            o.step()
    for pf, pr in zip(fast.parameters(), ref.parameters()):
        torch.testing.assert_close(pf, pr, rtol=1e-5, atol=1e-7)
