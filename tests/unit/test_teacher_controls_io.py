"""Control teachers (random / synthetic) and the official teacher-file import/export."""
import numpy as np
import pytest
import torch

from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.errors import ArtifactError, ConfigError
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.controls import make_control
from dllm2rec.teachers.official_io import export_official, import_official


@pytest.fixture(scope="module")
def ds():
    return make_synthetic(n_items=50, n_users=30, seq_len=14, seed=2)


def _hit_rate(art, ds):
    tr = ds["train"]
    tgt = np.zeros(art.n_rows, np.int64)
    tgt[tr.row_id] = tr.target
    return (art.topk_ids == tgt[:, None]).any(1).mean()


def test_random_control_shapes(ds):
    art = make_control("random:32", ds, seed=0)
    assert art.item_emb.shape == (50, 32) and art.topk_ids.shape == (len(ds["train"]), 20)
    assert art.covered.all() and art.manifest["dataset_fingerprint"] == ds.fingerprint()
    s = np.sort(art.topk_ids, 1)
    assert not (s[:, 1:] == s[:, :-1]).any()
    assert (np.diff(art.topk_dist, axis=1) >= 0).all()
    assert make_control("random", ds, seed=0).dim == 64
    assert _hit_rate(art, ds) < 0.7  # 20 random of 50 items: ~0.4


def test_synthetic_control_knows_targets_and_partial_coverage(ds):
    art = make_control("synthetic:1.0", ds, seed=0)
    assert _hit_rate(art, ds) == 1.0
    art = make_control("synthetic:0.8:0.5", ds, seed=0)
    assert 0.3 < art.coverage < 0.7
    assert (art.topk_ids[~art.covered] == -1).all()
    art.validate(ds)
    with pytest.raises(ConfigError):
        make_control("synthetic:x", ds)
    with pytest.raises(ConfigError):
        make_control("oracle", ds)


def test_official_files_round_trip(ds, tmp_path):
    art = make_control("synthetic", ds, seed=3)
    export_official(art, tmp_path / "off")
    emb = torch.load(tmp_path / "off" / "all_embeddings.pt", weights_only=True)
    assert emb.shape == (50, 64)
    back = import_official(tmp_path / "off", ds)
    assert np.array_equal(back.topk_ids, art.topk_ids)
    assert np.array_equal(back.topk_dist, art.topk_dist)  # %.9g is exact for float32
    assert np.array_equal(back.item_emb, art.item_emb)
    back.save(tmp_path / "art", ds)
    TeacherArtifacts.load(tmp_path / "art", ds)


def test_official_import_refuses_mismatches(ds, tmp_path):
    art = make_control("synthetic", ds, seed=3)
    d = export_official(art, tmp_path / "off")
    lines = (d / "myrank_train.txt").read_text().splitlines()
    (d / "myrank_train.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ArtifactError, match="rows but the dataset has"):
        import_official(d, ds)
    (d / "myrank_train.txt").write_text("\n".join(lines[:-1] + ["1 2 3"]) + "\n")
    with pytest.raises(ArtifactError, match="values"):
        import_official(d, ds)
    partial = make_control("synthetic:0.8:0.5", ds, seed=3)
    with pytest.raises(ArtifactError, match="covers"):
        export_official(partial, tmp_path / "p")
    export_official(partial, tmp_path / "p", allow_partial=True)
    back = import_official(tmp_path / "p", ds)
    assert np.array_equal(back.covered, partial.covered)


def test_teacher_cli_import_validate_stats_export(ds, tmp_path):
    from typer.testing import CliRunner

    from dllm2rec.cli import app

    ds.save(tmp_path / "ds")
    export_official(make_control("synthetic:1.0", ds, seed=0), tmp_path / "off")
    run = CliRunner().invoke
    r = run(app, ["teacher", "import", str(tmp_path / "off"), "--dataset", str(tmp_path / "ds"),
                  "--out", str(tmp_path / "art")])
    assert r.exit_code == 0, r.output
    r = run(app, ["teacher", "validate", str(tmp_path / "art"), "--dataset", str(tmp_path / "ds")])
    assert r.exit_code == 0 and r.output.startswith("ok:"), r.output
    r = run(app, ["teacher", "stats", str(tmp_path / "art"), "--dataset", str(tmp_path / "ds")])
    assert r.exit_code == 0 and '"train_HR@20": 1.0' in r.output, r.output
    r = run(app, ["teacher", "export", str(tmp_path / "art"), "--out", str(tmp_path / "off2")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "off2" / "myrank_train.txt").read_text() == (tmp_path / "off" / "myrank_train.txt").read_text()
    other = make_synthetic(n_items=50, n_users=31, seq_len=14, seed=5)
    other.save(tmp_path / "other")
    r = run(app, ["teacher", "validate", str(tmp_path / "art"), "--dataset", str(tmp_path / "other")])
    assert r.exit_code != 0


def test_export_pad_to_4096_for_the_official_script(tmp_path):
    """--pad-to: zero columns up to the official script's hard-coded 4096; the real columns are unchanged."""
    import pytest
    import torch

    from dllm2rec.data.synthetic import make_synthetic
    from dllm2rec.errors import ArtifactError
    from dllm2rec.teachers.controls import make_control
    from dllm2rec.teachers.official_io import EMB_FILE

    ds = make_synthetic(n_items=30, n_users=20, seq_len=8, seed=0)
    art = make_control("random:16", ds, seed=0)
    export_official(art, tmp_path / "off", pad_to=4096)
    emb = torch.load(tmp_path / "off" / EMB_FILE, weights_only=True)
    assert tuple(emb.shape) == (30, 4096)
    assert torch.equal(emb[:, :16], torch.from_numpy(art.item_emb.astype("float32")))
    assert not emb[:, 16:].any()
    assert not list((tmp_path / "off").glob(".*.tmp"))
    with pytest.raises(ArtifactError, match="below the teacher's embedding width"):
        export_official(art, tmp_path / "off2", pad_to=8)


def test_official_import_refuses_bad_values_naming_line_and_column(tmp_path):
    """One bad id is an error (it silently made the row 'unanswered'); only an all -1 row means not covered."""
    import numpy as np
    import pytest

    from dllm2rec.data.synthetic import make_synthetic
    from dllm2rec.errors import ArtifactError
    from dllm2rec.teachers.controls import make_control
    from dllm2rec.teachers.official_io import CONF_FILE, RANK_FILE

    ds = make_synthetic(n_items=30, n_users=20, seq_len=8, seed=0)
    src = export_official(make_control("random:8", ds, seed=0), tmp_path / "off")
    good_rank = (src / RANK_FILE).read_text().splitlines()
    good_conf = (src / CONF_FILE).read_text().splitlines()

    def with_line(fname, lines, i, text):
        new = list(lines)
        new[i] = text
        (src / fname).write_text("\n".join(new) + "\n")

    n = len(good_rank[0].split())
    for bad_id in ("-5", "30", "999999"):
        with_line(RANK_FILE, good_rank, 2, " ".join([bad_id] + good_rank[2].split()[1:]))
        with pytest.raises(ArtifactError, match=r"line 3, column 1: item id"):
            import_official(src, ds)
    with_line(RANK_FILE, good_rank, 2, " ".join(["-1"] * n))          # the explicit marker: not covered
    art = import_official(src, ds)
    assert not art.covered[2] and art.covered.sum() == len(good_rank) - 1
    (src / RANK_FILE).write_text("\n".join(good_rank) + "\n")
    with_line(CONF_FILE, good_conf, 1, " ".join(["-1e30"] + good_conf[1].split()[1:]))
    with pytest.raises(ArtifactError, match=r"line 2, column 1: distance"):
        import_official(src, ds)
    (src / CONF_FILE).write_bytes(b"\xff\xfe" + "\n".join(good_conf).encode())
    with pytest.raises(ArtifactError, match="not UTF-8"):
        import_official(src, ds)
    (src / CONF_FILE).write_text("\n".join(good_conf) + "\n")
    import torch

    torch.save(torch.zeros(30, 0), src / "all_embeddings.pt")
    with pytest.raises(ArtifactError, match="N, D >= 1"):
        import_official(src, ds)
    assert np.isfinite(art.topk_dist[art.covered]).all()
