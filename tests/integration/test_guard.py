"""The pre-flight check and the validation-only guard (issue 14): an informative teacher is kept, a random one is
called out and never chosen over plain, and the search never reads test."""
import json

import numpy as np
import pytest
import yaml

from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.teachers.controls import make_control
from dllm2rec.training.trainer import Trainer
from dllm2rec.workflows import guard

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    ds = make_synthetic(n_items=200, n_users=300, seed=0)
    ds.save(root / "data")
    make_control("synthetic:0.8", ds, seed=0).save(root / "oracle", ds)   # knows the next item: helps
    make_control("random", ds, seed=0).save(root / "random", ds)          # no knowledge
    return root, ds


def _config(root, teacher, epochs=20):
    cfg = {"data": {"path": str(root / "data")}, "model": {"name": "gru4rec", "dim": 32},
           "train": {"epochs": epochs, "patience": 5, "ks": [10, 20], "batch_size": 128, "num_threads": 1,
                     "seed": 7},
           "distill": {"strategy": "dllm2rec", "teacher": str(root / teacher)}}
    p = root / f"{teacher}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.slow
def test_preflight_tells_a_helpful_teacher_from_a_random_one(setup):
    root, ds = setup
    good = guard.preflight(_config(root, "oracle"), [], root / "pf-oracle", ds=ds, epochs=3, echo=lambda m: None)
    bad = guard.preflight(_config(root, "random"), [], root / "pf-random", ds=ds, epochs=3, echo=lambda m: None)
    assert good["verdict"] == "likely to help" and good["teacher_right_student_wrong"] > 0.3
    assert bad["verdict"] == "likely to harm" and bad["teacher_hr_train_rows"] < 0.2
    assert json.loads((root / "pf-random" / "preflight.json").read_text())["verdict"] == "likely to harm"


@pytest.mark.slow
def test_guard_keeps_a_helpful_teacher_and_drops_a_random_one(setup):
    root, ds = setup
    kept = guard.guarded_distill(_config(root, "oracle"), [], root / "g-oracle", trials=3, chunk=5, ds=ds,
                                 echo=lambda m: None)
    assert kept["trials"][0]["plain"] and kept["distillation_kept"], kept["decision"]
    assert kept["chosen_value"] > kept["plain_value"]
    dropped = guard.guarded_distill(_config(root, "random"), [], root / "g-random", trials=3, chunk=5, ds=ds,
                                    echo=lambda m: None)
    assert dropped["chosen_value"] >= dropped["plain_value"]                 # never below plain on validation
    on_disk = json.loads((root / "g-random" / "guard.json").read_text())
    assert on_disk["chosen"] == dropped["chosen"] and "decision" in on_disk


@pytest.mark.slow
def test_guard_selection_never_reads_test(setup, monkeypatch):
    """Scramble every test metric the trainer computes: the guard's trials and choice must not move."""
    root, ds = setup
    real = Trainer.evaluate_split
    rng = np.random.default_rng(123)

    def scrambled(self, split, model=None, **kw):
        out = real(self, split, model, **kw)
        return {k: float(rng.random()) for k in out} if split == "test" else out

    a = guard.guarded_distill(_config(root, "oracle", epochs=8), [], root / "t-a", trials=3, chunk=4, ds=ds,
                              prune=False, echo=lambda m: None)
    monkeypatch.setattr(Trainer, "evaluate_split", scrambled)
    b = guard.guarded_distill(_config(root, "oracle", epochs=8), [], root / "t-b", trials=3, chunk=4, ds=ds,
                              prune=False, echo=lambda m: None)
    assert a["chosen"] == b["chosen"]
    assert [t["value"] for t in a["trials"]] == [t["value"] for t in b["trials"]]
