"""The fast training paths compute exactly what the straightforward (official-code) formulations compute."""
import pytest
import torch

from dllm2rec.config import load_config
from dllm2rec.students.caser import Caser
from dllm2rec.students.sasrec import SASRec


def _batch(n_items=50, L=10):
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(0, n_items, (7, L), generator=g)
    lens = torch.tensor([1, 3, 10, 5, 0, 2, 9])
    for i, n in enumerate(lens):
        seq[i, n:] = n_items  # right padding; row 4 is an empty history
    return seq, lens


@pytest.mark.parametrize("layers,heads", [(1, 1), (2, 2), (3, 1)])
def test_sasrec_last_query_only_equals_full_sequence(layers, heads):
    torch.manual_seed(0)
    m = SASRec(50, 10, 16, 0.1, n_layers=layers, n_heads=heads).eval()
    seq, lens = _batch()
    fast = m.encode(seq, lens)
    full = m.sequence_states(seq)[torch.arange(7), lens.clamp(min=1) - 1]
    assert torch.allclose(fast, full, atol=1e-5), (fast - full).abs().max()


def _caser_conv2d(m: Caser, seq, lens):
    """Reference: Caser's state through ``Conv2d`` as the official code computes it."""
    import torch.nn.functional as F

    x = (m.embed_items(seq) * m.pad_mask(seq)).unsqueeze(1)  # [B, 1, L, d]
    hs = [F.relu(conv(x)).squeeze(3).amax(dim=2) for conv in m.horizontal]  # each [B, F]
    v = m.vertical(x).view(x.shape[0], -1)  # [B, d]
    return m.drop(torch.cat([v, *hs], dim=1))


def test_caser_matmul_form_equals_conv2d_values_and_gradients():
    torch.manual_seed(0)
    m = Caser(50, 10, 16, 0.1, num_filters=4, filter_sizes=[1, 2, 3, 4, 10])
    seq, lens = _batch()
    grads = []
    for fn in (m.encode, lambda seq, lens: _caser_conv2d(m, seq, lens)):
        m.zero_grad()
        torch.manual_seed(1)  # same dropout mask (same shape, same stream)
        out = fn(seq, lens)
        (out * torch.arange(out.shape[1], dtype=out.dtype)).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = grads
    assert torch.allclose(a, b, atol=1e-6)
    assert ga.keys() == gb.keys()
    for n in ga:
        assert torch.allclose(ga[n], gb[n], rtol=1e-4, atol=1e-5), n


def test_caser_rejects_unpadded_histories():
    m = Caser(50, 10, 16, 0.1)
    with pytest.raises(ValueError, match="max_len=10"):
        m.encode(torch.zeros(2, 7, dtype=torch.long), torch.tensor([3, 4]))


@pytest.mark.parametrize("setting,expected", [(None, True), (False, False), (True, True)])
def test_fused_adam_is_the_default_and_can_be_turned_off(tmp_path, tiny_dataset, setting, expected):
    from dllm2rec.training.trainer import Trainer

    ov = [f"out_dir={tmp_path}"] + ([] if setting is None else [f"optim.fused={str(setting).lower()}"])
    tr = Trainer(load_config(None, ov), tiny_dataset, tmp_path / "run", quiet=True)
    assert bool(tr.optimizer.defaults.get("fused")) is expected
