import json

from typer.testing import CliRunner

from dllm2rec.cli import app, main

runner = CliRunner()


def test_train_and_evaluate_cli(tiny_dataset_dir, tmp_path):
    r = runner.invoke(app, ["train", "--data", str(tiny_dataset_dir), "--model", "gru4rec", "-o", "train.epochs=2",
                            "--run-dir", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "selected epoch" in r.output and "NDCG@20" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--split", "valid", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert abs(m["full/NDCG@20"] - res["valid"]["valid/full/NDCG@20"]) < 1e-9


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "train" in r.output and "data" in r.output


def test_bad_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("train:\n  epochs: [\n")
    try:
        main(["train", "--config", str(bad)])
    except SystemExit as e:
        assert e.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c.yaml" in err[0] and "malformed YAML" in err[0]
    try:
        main(["train", "--data", str(tmp_path / "nope")])
    except SystemExit as e:
        assert e.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
