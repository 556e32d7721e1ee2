import pytest

from dllm2rec.config import load_config
from dllm2rec.errors import ConfigError


def test_defaults_are_paper_defaults():
    c = load_config()
    assert (c.model.dim, c.model.dropout, c.optim.lr, c.train.batch_size, c.loss.n_neg) == (64, 0.1, 1e-3, 256, 1)
    assert c.train.select_metric == "NDCG@20"


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: gru4rec\ntrain:\n  epochs: 3\n")
    c = load_config(p, ["train.epochs=5", "distill.params.lam=0.5", "train.ks=[5,10]"])
    assert c.model.name == "gru4rec" and c.train.epochs == 5 and c.distill.params["lam"] == 0.5
    assert c.train.ks == [5, 10]


@pytest.mark.parametrize("text, match", [
    ("model: [1, 2\n", "malformed YAML"),
    ("train:\n  epochs: many\n", "field 'train.epochs'"),
    ("trian: {}\n", "field 'trian'"),
])
def test_bad_config_one_line(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p)
    assert "\n" not in str(e.value)
