"""Report aggregation on hand-made results.json files: mean, sample std and Student-t 95 % CI checked by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dllm2rec.evaluation import report as R
from dllm2rec.evaluation import runs as RU
from dllm2rec.evaluation import stats as ST
from dllm2rec.evaluation import teacher_metrics as TM


def fake_run(root: Path, name: str, *, dataset="ds", student="sasrec", strategy="none", teacher=None, seed=0,
             test_ndcg=0.1, test_hr=0.2, valid_ndcg=0.11, best_epoch=5, epochs_run=15, cap=100, patience=10,
             params=None, curve=(0.05, 0.08, 0.1), experiment_label=None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    params = dict(params or {})
    res = {
        "dataset": dataset, "student": student, "seed": seed, "best_epoch": best_epoch, "epochs_run": epochs_run,
        "strategy": {"strategy": strategy, **params},
        "valid": {"valid/full/NDCG@20": valid_ndcg, "valid/full/HR@20": 2 * valid_ndcg},
        "test": {"test/full/NDCG@20": test_ndcg, "test/full/HR@20": test_hr},
        "seconds_per_epoch": 1.5,
        "config": {"train": {"epochs": cap, "patience": patience, "seed": seed},
                   "distill": {"strategy": strategy, "teacher": teacher, "params": params}},
    }
    (d / "results.json").write_text(json.dumps(res))
    (d / "log.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "valid/full/NDCG@20": v}) + "\n"
                                         for i, v in enumerate(curve)))
    if experiment_label:
        (d / "experiment.json").write_text(json.dumps({"label": experiment_label}))
    return d


def test_t_quantiles_match_tables():
    # two-sided 95 % critical values of Student's t (any statistics table)
    for dof, want in [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (29, 2.0452)]:
        assert ST.t_ppf(0.975, dof) == pytest.approx(want, abs=1e-4)
    assert ST.t_ppf(0.025, 2) == pytest.approx(-4.3027, abs=1e-4)
    assert ST.t_cdf(0.0, 5) == pytest.approx(0.5)


def test_stat_by_hand():
    s = ST.Stat.of([0.10, 0.12, 0.14])
    assert s.n == 3
    assert s.mean == pytest.approx(0.12)
    assert s.std == pytest.approx(0.02)                       # sqrt((0.0004 + 0 + 0.0004) / 2)
    assert s.ci95 == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)  # = 0.049683
    assert s.fmt("ci") == "0.1200 ± 0.0497"
    assert s.fmt("std") == "0.1200 ± 0.0200"
    one = ST.Stat.of([0.3])
    assert one.n == 1 and math.isnan(one.ci95) and one.fmt() == "0.3000"
    assert ST.Stat.of([]).fmt() == "–"


def test_aggregate_groups_and_labels(tmp_path):
    for s, v in enumerate([0.10, 0.12, 0.14]):
        fake_run(tmp_path, f"none-{s}", seed=s, test_ndcg=v, test_hr=2 * v, best_epoch=4 + s)
    for s, v in enumerate([0.20, 0.30]):
        fake_run(tmp_path, f"ctl-{s}", seed=s, strategy="dllm2rec", teacher="random:64", test_ndcg=v)
    fake_run(tmp_path, "kd-0", strategy="dllm2rec", teacher="/x/artifacts/teachers/ds", test_ndcg=0.5)
    fake_run(tmp_path, "abl-0", strategy="dllm2rec", teacher="/t", params={"use_position": False}, test_ndcg=0.4)
    fake_run(tmp_path, "named-0", strategy="rd", teacher="/t", experiment_label="my-rd", test_ndcg=0.3)
    fake_run(tmp_path, "other-ds", dataset="zz", test_ndcg=0.9)

    runs = RU.load_runs([tmp_path])
    assert len(runs) == 9
    groups = RU.aggregate(runs)
    by = {(g.dataset, g.label): g for g in groups}
    assert set(by) == {("ds", "none"), ("ds", RU.CONTROL_LABEL), ("ds", "dllm2rec"),
                       ("ds", "dllm2rec-wo-position"), ("ds", "my-rd"), ("zz", "none")}
    none = by[("ds", "none")]
    assert none.n == 3 and none.seeds == [0, 1, 2]
    assert none.stats["test/NDCG@20"].mean == pytest.approx(0.12)
    assert none.stats["test/NDCG@20"].ci95 == pytest.approx(0.049683, abs=1e-6)
    assert none.stats["test/HR@20"].mean == pytest.approx(0.24)
    assert none.stats["best_epoch"].mean == pytest.approx(5.0)
    ctl = by[("ds", RU.CONTROL_LABEL)]
    assert ctl.stats["test/NDCG@20"].mean == pytest.approx(0.25)
    assert ctl.stats["test/NDCG@20"].std == pytest.approx(math.sqrt(0.005))
    assert ctl.stats["test/NDCG@20"].ci95 == pytest.approx(12.7062 * math.sqrt(0.005) / math.sqrt(2), rel=1e-4)
    # method order inside a dataset: none, control, ..., dllm2rec, ablations
    labels = [g.label for g in groups if g.dataset == "ds"]
    assert labels[:2] == ["none", RU.CONTROL_LABEL]
    assert labels.index("dllm2rec") < labels.index("dllm2rec-wo-position")


def test_same_seed_found_twice_counts_once(tmp_path):
    d = fake_run(tmp_path, "a", seed=0)
    runs = RU.load_runs([tmp_path, d, str(d / "results.json")])
    assert len(runs) == 1


def test_label_from_param(tmp_path):
    fake_run(tmp_path, "a", strategy="dllm2rec", teacher="/t", params={"lam": 0.3})
    fake_run(tmp_path, "b", strategy="dllm2rec", teacher="/t", params={"lam": 0.7})
    labels = sorted(g.label for g in RU.aggregate(RU.load_runs([tmp_path], label_from="lam")))
    assert labels == ["dllm2rec [lam=0.3]", "dllm2rec [lam=0.7]"]


def test_markdown_table_protocol_control_and_cap_marker(tmp_path):
    fake_run(tmp_path, "none-0", test_ndcg=0.10)
    fake_run(tmp_path, "ctl-0", strategy="dllm2rec", teacher="random", test_ndcg=0.12)
    fake_run(tmp_path, "kd-0", strategy="dllm2rec", teacher="/t", test_ndcg=0.15, best_epoch=100, epochs_run=100,
             cap=100)
    md = R.markdown_table(RU.aggregate(RU.load_runs([tmp_path])),
                          teacher_metrics={"ds": {"test/full/NDCG@20": 0.33}})
    assert "full ranking over all items, valid-selected, test at selected epoch" in md
    assert f"**{RU.CONTROL_LABEL}**" in md
    assert "+0.0500 (+50.0%)" in md      # dllm2rec vs none
    assert "+0.0300 (+25.0%)" in md      # dllm2rec vs random-teacher control
    assert "†" in md and "epoch cap" in md
    assert "| ds | teacher |" in md and "0.3300" in md
    row = next(line for line in md.splitlines() if line.startswith("| ds | sasrec | none"))
    assert "| 1 |" in row                # n is shown


def test_missing_control_is_called_out(tmp_path):
    fake_run(tmp_path, "kd-0", strategy="dllm2rec", teacher="/t")
    md = R.markdown_table(RU.aggregate(RU.load_runs([tmp_path])))
    assert "no random-teacher control run for ds/sasrec" in md


def test_teacher_metrics_file_shapes(tmp_path):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"test/full/NDCG@20": 0.2, "test/full/HR@20": 0.4}))
    assert TM.load_teacher_metrics(flat, ["ml-100k"]) == {"ml-100k": {"test/full/NDCG@20": 0.2,
                                                                    "test/full/HR@20": 0.4}}
    keyed = tmp_path / "keyed.json"
    keyed.write_text(json.dumps({"a": {"test/full/NDCG@20": 0.1}, "b": {"test": {"NDCG@20": 0.3}}}))
    tm = TM.load_teacher_metrics(keyed)
    assert TM.find_metric(tm["a"], "test", "NDCG@20") == 0.1
    assert TM.find_metric(tm["b"], "test", "NDCG@20") == 0.3
    assert TM.find_metric({"valid": {"NDCG@20": 0.5}}, "test", "NDCG@20") is None


def test_no_runs_is_a_clear_error(tmp_path):
    from dllm2rec.errors import Dllm2recError

    with pytest.raises(Dllm2recError, match="no results.json"):
        R.build_report([tmp_path / "nothing"], tmp_path / "out")


def test_teacher_metrics_from_artifacts_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({
        "teacher": "llm-emb", "teacher_valid": {"valid/full/NDCG@20": 0.11},
        "teacher_test": {"test/full/NDCG@20": 0.12, "test/full/HR@20": 0.3}}))
    tm = TM.teacher_metrics_from_dir(tmp_path)
    assert TM.find_metric(tm, "test", "NDCG@20") == 0.12
    assert TM.find_metric(tm, "valid", "NDCG@20") == 0.11
    assert TM.find_metric(tm, "test", "HR@20") == 0.3


def test_report_cells_from_known_values_and_teacher_manifest(tmp_path):
    """Each cell of the table from known values; the teacher's *test* numbers land in the test column even when
    the manifest lists teacher_valid first (the bug: .0977 valid shown as test), with its protocol named."""
    import json

    runs = tmp_path / "runs"
    fake_run(runs, "none-0", test_ndcg=0.10)
    fake_run(runs, "kd-0", strategy="dllm2rec", teacher="/t", test_ndcg=0.15)
    tdir = tmp_path / "teacher"
    tdir.mkdir()
    (tdir / "manifest.json").write_text(json.dumps({
        "dataset": "ds", "fit": {"valid/full-excl/NDCG@20": 0.5},
        "teacher_valid": {"full-excl/HR@20": 0.245, "full-excl/NDCG@20": 0.0977},
        "teacher_test": {"full-excl/HR@20": 0.2276, "full-excl/NDCG@20": 0.0908}}))
    for src in (tdir, tdir / "manifest.json"):                      # the directory and the file both work
        tm = TM.load_teacher_metrics(src, ["ds"])
        md = R.markdown_table(RU.aggregate(RU.load_runs([runs])), teacher_metrics=tm)
        head = next(line for line in md.splitlines() if line.startswith("| dataset"))
        cols = [c.strip() for c in head.strip("|").split("|")]
        trow = next(line for line in md.splitlines() if line.startswith("| ds | teacher"))
        cells = dict(zip(cols, [c.strip() for c in trow.strip("|").split("|")]))
        assert cells["test NDCG@20"] == "0.0908"                  # one seed each: one column per metric
        assert cells["test HR@20"] == "0.2276" and "test NDCG@20 (mean ± std)" not in cols
        assert cells["valid NDCG@20"] == "0.0977" and cells["valid HR@20"] == "0.2450"
        assert "history masked" in cells["method"]
        srow = next(line for line in md.splitlines() if line.startswith("| ds | sasrec | none"))
        scells = dict(zip(cols, [c.strip() for c in srow.strip("|").split("|")]))
        assert scells["test NDCG@20"] == "0.1000" and scells["n"] == "1"
        assert scells["best epoch"] == str(int(scells["best epoch"]))  # "14", not "14.0"
        assert "history not masked" in md
    assert TM.find_metric({"teacher_valid": {"NDCG@20": 1.0}}, "test", "NDCG@20") is None
    assert TM.find_metric({"NDCG@20": 0.3}, "test", "NDCG@20") == 0.3


def test_summary_json_is_strict_json(tmp_path):
    import json

    fake_run(tmp_path / "runs", "none-0", test_ndcg=0.10)              # n = 1: std and CI are undefined
    R.build_report([tmp_path / "runs"], tmp_path / "rep", plots=False)

    def refuse(c):
        raise ValueError(f"non-JSON constant {c}")

    data = json.loads((tmp_path / "rep" / "summary.json").read_text(), parse_constant=refuse)
    assert data["groups"][0]["stats"]["test/NDCG@20"]["std"] is None
