"""Config values are validated when the config loads (issue 12 section 5, issue 16 select_metric): one line naming
the field, exit 2 from the CLI, and nothing written to the run directory."""
import pytest
import torch

from dllm2rec.config import load_config
from dllm2rec.errors import ConfigError


@pytest.mark.parametrize("override, field", [
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=-5", "train.batch_size"),
    ("train.eval_every=0", "train.eval_every"),
    ("train.epochs=0", "train.epochs"),
    ("train.patience=0", "train.patience"),
    ("train.eval_batch=0", "train.eval_batch"),
    ("train.num_threads=0", "train.num_threads"),
    ("train.ks=[]", "train.ks"),
    ("train.ks=[0,10]", "train.ks.0"),
    ("train.select_metric=foo@10", "train.select_metric"),
    ("train.select_metric=NDCG@0", "train.select_metric"),
    ("train.select_metric=NDCG", "train.select_metric"),
    ("optim.lr=-0.01", "optim.lr"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=nan", "optim.lr"),
    ("optim.lr=.inf", "optim.lr"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay"),
    ("model.dropout=2", "model.dropout"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("model.dim=0", "model.dim"),
    ("loss.n_neg=0", "loss.n_neg"),
    ("train.device=gpu", "train.device"),
])
def test_bad_values_fail_at_load_in_one_line(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"field '{field}'" in msg and "\n" not in msg, msg


def test_bad_value_in_a_yaml_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: field 'optim.lr': .*finite"):
        load_config(p)


@pytest.mark.parametrize("given, canon", [("ndcg@10", "NDCG@10"), ("NDCG@20", "NDCG@20"), ("hr@5", "HR@5"),
                                          ("Hit@5", "HR@5"), ("recall@10", "Recall@10"), ("RECALL@1", "Recall@1"),
                                          ("mrr@20", "MRR@20"), (" MRR @ 5 ", "MRR@5")])
def test_select_metric_case_insensitive_and_canonical(given, canon):
    from dllm2rec.config import parse_metric

    assert load_config(None, [f"train.select_metric={given}"]).train.select_metric == canon
    assert parse_metric(given) == (canon.split("@")[0], int(canon.split("@")[1]))


def test_select_k_outside_ks_is_evaluated_not_silently_added():
    c = load_config(None, ["train.select_metric=NDCG@50"])
    assert c.train.ks == [1, 5, 10, 20] and c.train.eval_ks == [1, 5, 10, 20, 50]
    assert load_config().train.eval_ks == [1, 5, 10, 20]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's message")
def test_cuda_without_cuda_is_one_line():
    with pytest.raises(ConfigError, match=r"field 'train.device': 'cuda' but CUDA is not available"):
        load_config(None, ["train.device=cuda"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_device_index_must_exist():
    assert load_config(None, ["train.device=cuda"]).train.device == "cuda"
    with pytest.raises(ConfigError, match="CUDA device"):
        load_config(None, [f"train.device=cuda:{torch.cuda.device_count()}"])


@pytest.mark.parametrize("override", ["train.batch_size=0", "train.select_metric=NDCG@x", "optim.lr=-0.01",
                                      "model.dropout=2", "train.eval_every=0", "distill.strategy=dllm2rec"]
                         + ([] if torch.cuda.is_available() else ["train.device=cuda"]))
def test_failed_start_leaves_nothing_behind(tiny_dataset_dir, tmp_path, capsys, override):
    from dllm2rec.cli import main

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(tiny_dataset_dir), "--run-dir", str(run), "-o", "train.epochs=1",
              "-o", override])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not run.exists()  # no best/, last/, log.jsonl, config.yaml
