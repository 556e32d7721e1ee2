"""The whole BIGRec chain through the CLI on a tiny offline LLaMA: finetune -> generate -> ground -> evaluate."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dllm2rec.cli import app
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.bigrec.prompts import format_response
from dllm2rec.teachers.bigrec.tiny import make_tiny_llama, tiny_dataset


def cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def last_json(text):
    return json.loads(text[text.index("{"):])


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM2REC_CACHE", str(tmp_path / "cache"))
    ds = tiny_dataset(n_train=24, n_eval=8)
    ds.save(tmp_path / "ds")
    return tmp_path, ds, make_tiny_llama(tmp_path / "model")


def test_teacher_chain(env):
    tmp, ds, model = env
    common = ["--dataset", tmp / "ds", "--model", model]
    out = last_json(cli("teacher", "finetune", *common, "--out", tmp / "ft", "--max-steps", "1", "--sample", "8",
                        "--valid-sample", "4", "--batch-size", "4", "--warmup-steps", "1"))
    assert out["steps"] == 1 and (tmp / "ft" / "adapter" / "adapter_config.json").is_file()
    out = last_json(cli("teacher", "finetune", *common, "--out", tmp / "ft", "--max-steps", "2", "--sample", "8",
                        "--valid-sample", "4", "--batch-size", "4", "--warmup-steps", "1", "--resume"))
    assert out["steps"] == 2  # resumed from last/, one more step

    adapter = tmp / "ft" / "adapter"
    # constrained generation on 20 of the 24 training rows, in shards of 8
    r = last_json(cli("teacher", "generate", *common, "--adapter", adapter, "--out", tmp / "gen-c", "--constrained",
                      "--num-beams", "6", "--budget", "20", "--shard-size", "8", "--batch-size", "4"))
    assert r["complete"] and r["shards"] == 3
    cli("teacher", "ground", *common, "--gen", tmp / "gen-c", "--out", tmp / "art-c", "--top-n", "10")
    art = TeacherArtifacts.load(tmp / "art-c", ds)
    assert art.covered.sum() == 20 and art.manifest["teacher"] == "bigrec" and art.manifest["kind"] == "bigrec"
    assert art.manifest["pooling"] == "last-token" and art.manifest["decoding"]["constrained"]
    shard = json.loads((tmp / "gen-c" / "shard-00000.json").read_text())
    for texts, items, row in zip(shard["texts"], shard["items"], art.topk_ids[:8]):
        assert [ds.titles[i[0]] for i in items] == [t.strip('"') for t in texts]  # every beam is a real item
        assert row[:6].tolist() == [i[0] for i in items]                          # n-best list = the ranking
    assert all(format_response(ds.titles[i[0]]) == t for t, i in zip(shard["texts"][0], shard["items"][0]))

    # unconstrained (BIGRec) generation + grounding on all rows
    cli("teacher", "generate", *common, "--adapter", adapter, "--out", tmp / "gen-f", "--num-beams", "2",
        "--max-new-tokens", "6", "--shard-size", "16")
    cli("teacher", "ground", *common, "--gen", tmp / "gen-f", "--out", tmp / "art-f", "--top-n", "5",
        "--emb-dtype", "float16")
    art = TeacherArtifacts.load(tmp / "art-f", ds)
    assert art.covered.all() and art.top_n == 5 and art.manifest["distance"] == "l2"
    assert np.isfinite(art.target_dist).all() and len(art.manifest["commands"]) == 2

    # teacher evaluation on test rows
    cli("teacher", "generate", *common, "--adapter", adapter, "--split", "test", "--out", tmp / "gen-t",
        "--constrained", "--num-beams", "4", "--shard-size", "4")
    res = last_json(cli("teacher", "evaluate", *common, "--gen", tmp / "gen-t", "--ks", "1,5",
                        "--json-out", tmp / "eval.json"))
    assert res["rows"] == 8 and "full/HR@5" in res["teacher"] and "full/NDCG@5" in res["popularity"]
    assert res["speed"]["rows_per_s"] > 0 and res["catalogue_title_rate"] == 1.0
    assert json.loads((tmp / "eval.json").read_text())["rows"] == 8
