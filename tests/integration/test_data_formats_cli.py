"""`dllm2rec data import --recipe`, `data stats` (recipe, titles, warnings) and `evaluate --baseline popularity`
through the real CLI app, on files written here; plus the real Toys / ML-100K copies when ../shared is present."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dllm2rec.cli import app
from dllm2rec.data.schema import SeqDataset, make_split
from dllm2rec.errors import DataError, Dllm2recError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SEQ_HEAD = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
runner = CliRunner()


def run_ok(*args: str):
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return res


def head_value(out: str, key: str) -> str:
    line = next(ln for ln in out.splitlines() if ln.startswith(key + " "))
    return line[len(key):].strip()


def write_triple(d: Path) -> Path:
    d.mkdir()
    (d / "g.train.inter").write_text(SEQ_HEAD + "1\t7\t8\n1\t7 8\t9\n2\t8\t9\n")
    (d / "g.valid.inter").write_text(SEQ_HEAD + "1\t7 8 9\t8\n2\t8 9\t7\n")
    (d / "g.test.inter").write_text(SEQ_HEAD + "1\t8 9 8\t7\n2\t9 7\t10\n")
    (d / "g.item").write_text("item_id:token\tname:token_seq\n7\tSeven\n8\tEight\n9\tB00XYZ1234\n")
    return d


def write_positions_inter(path: Path) -> Path:
    """46 users × 5 items and 4 users × 40 items, positions written as timestamps (a leave-one-out-shaped log)."""
    rows = [(u, p % 6, p) for u in range(50) for p in range(5 if u < 46 else 40)]
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    return path


def test_import_recbole_sequential_dir_and_stats(tmp_path):
    src = write_triple(tmp_path / "rb")
    res = run_ok("data", "import", "recbole", str(src), "--out", str(tmp_path / "o"))
    assert head_value(res.stdout, "recipe").startswith("file (the source's own split")
    # items 7, 8, 9, 10 → 4; 9's name is an ASIN and 10 has no line: 2 placeholders
    assert head_value(res.stdout, "titles") == "2 of 4 items have no real title (missing, placeholder or an id such as an ASIN)"
    ds = SeqDataset.load(tmp_path / "o")
    assert ds.meta["placeholder_title_ids"] == [2, 3] and ds.titles[:2] == ["Seven", "Eight"]
    assert ds["test"].histories() == [[1, 2, 1], [2, 0]] and ds["test"].target.tolist() == [0, 3]
    stats = run_ok("data", "stats", str(tmp_path / "o")).stdout
    assert head_value(stats, "recipe") == head_value(res.stdout, "recipe") and "warning" not in stats


def test_degenerate_split_warns_on_import_and_in_stats(tmp_path):
    f = write_positions_inter(tmp_path / "pos.inter")
    res = run_ok("data", "import", "recbole", str(f), "--out", str(tmp_path / "tg"), "--recipe", "temporal-global")
    warns = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert warns == [f"warning: {s} rows come from 4 of 50 users (8.0% < 10%): the split evaluates a few users only "
                     f"(recipe temporal-global; try --recipe leave-one-out)" for s in ("valid", "test")]
    assert "warning" not in res.stdout
    stats = run_ok("data", "stats", str(tmp_path / "tg")).stdout
    assert [ln for ln in stats.splitlines() if ln.startswith("warning: ")] == warns
    loo = run_ok("data", "import", "recbole", str(f), "--out", str(tmp_path / "loo"), "--recipe", "leave-one-out")
    assert "warning" not in loo.output and head_value(loo.stdout, "recipe").startswith("leave-one-out")
    assert SeqDataset.load(tmp_path / "loo").meta["recipe"] == "leave-one-out"


def test_recipe_that_cannot_apply_is_refused_and_nothing_written(tmp_path):
    f = tmp_path / "x.inter"
    f.write_text("user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u in range(3) for i in range(4)))
    res = runner.invoke(app, ["data", "import", "recbole", str(f), "--out", str(tmp_path / "o"),
                              "--recipe", "temporal-global"])
    assert isinstance(res.exception, DataError) and "lacks field 'timestamp'" in str(res.exception)
    assert not (tmp_path / "o").exists()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run([sys.executable, "-m", "dllm2rec", "data", "import", "recbole", str(write_triple(tmp_path / "t")),
                           "--out", str(tmp_path / "o2"), "--recipe", "leave-one-out"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "ready-made (history, target) rows" in proc.stderr
    assert not (tmp_path / "o2").exists()


def test_duplicates_reported_and_dropped(tmp_path):
    f = tmp_path / "d.inter"
    rows = [(u, i, 10 * u + i) for u in range(3) for i in range(5)] + [(0, 2, 2), (1, 4, 14)]  # 2 exact repeats
    f.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    kept = run_ok("data", "import", "recbole", str(f), "--out", str(tmp_path / "k"), "--recipe", "leave-one-out")
    assert head_value(kept.stdout, "duplicates") == (
        "2 rows repeat an earlier (user, item, timestamp) (kept; --drop-duplicates drops them)")
    dropped = run_ok("data", "import", "recbole", str(f), "--out", str(tmp_path / "d"), "--recipe", "leave-one-out",
                     "--drop-duplicates")
    assert head_value(dropped.stdout, "duplicates") == "2 rows repeat an earlier (user, item, timestamp) (dropped)"
    assert head_value(dropped.stdout, "interactions") == "15"


def save_pop_dataset(path: Path) -> Path:
    pad = 5
    tr = make_split([[1], [2], [3], [0], [0], [4]], [0, 0, 0, 1, 1, 2], pad, 2)  # train counts [3, 2, 1, 0, 0]
    te = make_split([[0], [1, 0], [2], []], [1, 2, 3, 0], pad, 2)  # pessimistic ranks 1, 2, 4, 0
    SeqDataset("pop", 5, 2, list("abcde"), {"train": tr, "valid": te, "test": te}).save(path)
    return path


def test_evaluate_baseline_popularity(tmp_path):
    d = save_pop_dataset(tmp_path / "pop")
    out = run_ok("evaluate", "--baseline", "popularity", "--data", str(d), "--ks", "1,2").stdout.splitlines()
    assert out[0].startswith("baseline popularity: scores = train target counts")
    assert out[1] == "pop test: protocol full, full ranking over 5 items, 4 rows"
    cols, row = out[2].split(), out[3].split()
    vals = dict(zip(cols, map(float, row[1:])))
    assert row[0] == "test" and vals["HR@1"] == 0.25 and vals["HR@2"] == 0.5 and vals["NDCG@2"] == 0.4077
    js = json.loads(run_ok("evaluate", "--baseline", "popularity", "--data", str(d), "--ks", "1", "--json",
                           "--exclude-history", "--item-chunk", "2").stdout)
    assert js["full-excl/HR@1"] == 0.75  # history masked: ranks 0, 0, 3, 0
    res = runner.invoke(app, ["evaluate", "--baseline", "popularity"])
    assert isinstance(res.exception, Dllm2recError) and "--data" in str(res.exception)
    res = runner.invoke(app, ["evaluate", str(d), "--baseline", "popularity", "--data", str(d)])
    assert isinstance(res.exception, Dllm2recError) and "without a checkpoint" in str(res.exception)


@pytest.mark.skipif(not (SHARED / "amazon-toys-p5" / "sequential.txt").is_file(), reason="../shared/data/amazon-toys-p5 missing")
def test_real_toys_titles_are_all_placeholders(tmp_path):
    res = run_ok("data", "import", "p5", str(SHARED / "amazon-toys-p5"), "--out", str(tmp_path / "toys"))
    assert head_value(res.stdout, "titles").startswith("11,924 of 11,924 items have no real title")
    assert head_value(res.stdout, "recipe").startswith("leave-one-out") and "warning" not in res.output


@pytest.mark.skipif(not (SHARED / "movielens-100k" / "u.data").is_file(), reason="../shared/data/movielens-100k missing")
def test_real_ml100k_popularity_matches_dense_ranking(tmp_path):
    from dllm2rec.evaluation.metrics import metrics_from_ranks, target_ranks

    res = run_ok("data", "import", "movielens", str(SHARED / "movielens-100k"), "--out", str(tmp_path / "ml"))
    assert head_value(res.stdout, "titles").startswith("1 of 1,682 items")  # item 267 is titled "unknown"
    js = json.loads(run_ok("evaluate", "--baseline", "popularity", "--data", str(tmp_path / "ml"), "--json").stdout)
    ds = SeqDataset.load(tmp_path / "ml")
    counts = torch.as_tensor(ds.item_counts("train"), dtype=torch.float64)
    te = ds["test"]
    ranks = np.concatenate([target_ranks(counts.expand(len(te.target[s:s + 2048]), -1),
                                         torch.from_numpy(te.target[s:s + 2048])).numpy()
                            for s in range(0, len(te), 2048)])
    ref = metrics_from_ranks(ranks, (1, 5, 10, 20))
    assert all(js[k] == pytest.approx(v, abs=1e-12) for k, v in ref.items())
    assert round(js["full/HR@20"], 4) == 0.0626


@pytest.mark.skipif(not (SHARED / "amazon-toys-p5" / "sequential.txt").is_file(), reason="../shared/data/amazon-toys-p5 missing")
def test_real_toys_as_recbole_sequential_triple_equals_p5_leave_one_out(tmp_path):
    """Toys written as RecBole's benchmark triple (RecBole's augmentation: every prefix of ≤ 50 items, last two
    items valid/test) must give exactly the windows of the P5 leave-one-out import (same numeric ids)."""
    from dllm2rec.data.registry import import_dataset

    d = tmp_path / "toys-rb"
    d.mkdir()
    rows: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for line in (SHARED / "amazon-toys-p5" / "sequential.txt").read_text().splitlines():
        u, *s = line.split()
        n = len(s)
        for i in range(1, n - 2):
            rows["train"].append(f"{u}\t{' '.join(s[max(0, i - 50):i])}\t{s[i]}\n")
        for split, i in (("valid", n - 2), ("test", n - 1)):
            rows[split].append(f"{u}\t{' '.join(s[max(0, i - 50):i])}\t{s[i]}\n")
    for split, rs in rows.items():
        (d / f"toys.{split}.inter").write_text(SEQ_HEAD + "".join(rs))
    rb = import_dataset("recbole", d)
    p5 = import_dataset("p5", SHARED / "amazon-toys-p5")
    assert rb.meta["recipe"] == "file" and rb.n_items == p5.n_items == 11_924
    assert {s: rb[s].content_hash() for s in rb.splits} == {s: p5[s].content_hash() for s in p5.splits}
    assert rb.meta["split_warnings"] == [] and rb.meta["placeholder_titles"] == 11_924  # no .item file
