import json

import pytest
import torch

from dllm2rec.config import load_config
from dllm2rec.training.trainer import Trainer

OV = ["train.epochs=6", "train.patience=3", "train.batch_size=64", "train.eval_batch=256"]


def _cfg(tmp_path, *extra):
    return load_config(None, OV + [f"out_dir={tmp_path}", *extra])


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "caser"])
def test_fit_writes_results_and_selects_on_valid(tmp_path, tiny_dataset, model):
    tr = Trainer(_cfg(tmp_path, f"model.name={model}"), tiny_dataset, tmp_path / model, quiet=True)
    res = tr.fit()
    log = [json.loads(x) for x in (tmp_path / model / "log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda r: r["valid/full/NDCG@20"])
    assert res["best_epoch"] == best["epoch"]
    assert not any(k.startswith("test/") for r in log for k in r)  # test never seen during training
    saved = json.loads((tmp_path / model / "results.json").read_text())
    assert saved["dataset_fingerprint"] == tiny_dataset.fingerprint()
    assert "valid" in saved["protocol"]["selection"] and saved["seed"] == 2024
    assert set(saved["test"]) >= {"test/full/HR@20", "test/full/NDCG@20"}
    assert (tmp_path / model / "best" / "model.safetensors").is_file()


def test_resume_equals_uninterrupted(tmp_path, tiny_dataset):
    full = Trainer(_cfg(tmp_path, "train.patience=100"), tiny_dataset, tmp_path / "a", quiet=True).fit()
    part = Trainer(_cfg(tmp_path, "train.patience=100"), tiny_dataset, tmp_path / "b", quiet=True)
    assert part.fit(max_epochs_this_call=2)["status"] == "paused"  # "killed" after epoch 2
    resumed = Trainer(_cfg(tmp_path, "train.patience=100"), tiny_dataset, tmp_path / "b", quiet=True).fit(resume=True)
    assert resumed["best_epoch"] == full["best_epoch"]
    for k, v in full["test"].items():
        assert resumed["test"][k] == pytest.approx(v, abs=1e-9), k
    la = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        x, y = json.loads(x), json.loads(y)
        assert x["train/loss"] == pytest.approx(y["train/loss"], abs=1e-9)


def test_seed_makes_runs_repeatable(tmp_path, tiny_dataset):
    a = Trainer(_cfg(tmp_path, "train.epochs=2"), tiny_dataset, tmp_path / "a", quiet=True).fit()
    b = Trainer(_cfg(tmp_path, "train.epochs=2"), tiny_dataset, tmp_path / "b", quiet=True).fit()
    assert a["test"] == b["test"]


def test_epoch_is_a_full_pass_without_replacement(tmp_path, tiny_dataset):
    tr = Trainer(_cfg(tmp_path), tiny_dataset, tmp_path / "x", quiet=True)
    seen = []
    orig = tr.step_loss

    def spy(idx, epoch, step):
        seen.append(idx.clone())
        return orig(idx, epoch, step)

    tr.step_loss = spy
    tr.train_epoch(1)
    allidx = torch.cat(seen)
    assert sorted(allidx.tolist()) == list(range(len(tiny_dataset["train"])))


def test_ce_and_dros_losses_train(tmp_path, tiny_dataset):
    for ov in (["loss.kind=ce"], ["loss.dros_alpha=0.5"]):
        res = Trainer(_cfg(tmp_path, "train.epochs=2", *ov), tiny_dataset, tmp_path / ov[0], quiet=True).fit()
        assert res["test"]["test/full/HR@20"] >= 0
