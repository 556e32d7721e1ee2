"""Contract of every registered teacher family (``dllm2rec.teachers.base.Teacher``), on the tiny-movielens fixture
(6 items, 5 training rows): typed config that names a bad field, ``artifacts()`` valid for the dataset with the
manifest keys, ``rows`` leaving the rest uncovered, a manifest that rebuilds its teacher; the shipped artifacts
still load. A new teacher family needs a RECIPES entry (a test says so) and then gets all of this.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dllm2rec.data.registry import import_dataset, load_or_prepare
from dllm2rec.errors import ArtifactError, ConfigError, Dllm2recError
from dllm2rec.registry import available, get_teacher, register_teacher
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.base import REQUIRED_MANIFEST_KEYS, Teacher, from_manifest

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "tiny-movielens"


def _fit_plain(t, ds, tmp):
    return t.fit(ds)


def _fit_bigrec(t, ds, tmp):
    """Stages 1-2 of BIGRec on the tiny offline LLaMA the teacher-chain test uses (no finetune: the base model's
    constrained beams are already valid catalogue items), then the teacher's own stage: ground."""
    pytest.importorskip("transformers")
    from dllm2rec.teachers.bigrec.generate import GenConfig, HFBackend, run_generation
    from dllm2rec.teachers.bigrec.prompts import format_response
    from dllm2rec.teachers.bigrec.tiny import make_tiny_llama
    from dllm2rec.teachers.models import load_causal_lm, load_tokenizer, resolve_model

    ref = resolve_model(str(make_tiny_llama(tmp / "model", extra_texts=[format_response(x) for x in ds.titles])))
    cfg = GenConfig(num_beams=3, constrained=True)
    run_generation(ds, "train", tmp / "gen", lambda: HFBackend(load_causal_lm(ref), load_tokenizer(ref), cfg,
                                                                ds.titles), cfg, ref.model_id, shard_size=2)
    t = get_teacher("bigrec").from_config(t.config_dict() | {"model": str(ref.path)})
    return t.fit(ds, tmp / "gen")


#: name -> (config small enough for the fixture, how to fit it)
def _fit_reranker(t, ds, tmp):
    """A popularity retriever + the tiny offline LLaMA; top_n 3 = every non-history item of the fixture."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from dllm2rec.evaluation.baselines import popularity_scorer
    from dllm2rec.teachers.bigrec.tiny import make_tiny_llama
    from dllm2rec.teachers.reranker import ModelRetriever

    t = get_teacher("llm-rerank").from_config(t.config_dict() | {"model": str(make_tiny_llama(tmp / "model"))})
    t.retriever = ModelRetriever(popularity_scorer(ds))
    return t.fit(ds)


RECIPES = {
    "random": ({"dim": 8, "top_n": 4, "seed": 1}, _fit_plain),
    "synthetic": ({"p": 0.8, "coverage": 0.6, "dim": 8, "top_n": 3, "seed": 2}, _fit_plain),
    # top_n 2: with 6 items and histories of 3, larger lists would reach masked items (see the report of issue 13)
    "llm-emb": ({"encoder": "random", "dim": 8, "epochs": 1, "top_n": 2, "cv_folds": 2}, _fit_plain),
    "bigrec": ({"top_n": 4}, _fit_bigrec),
    "llm-rerank": ({"top_n": 3, "steps": 1, "batch_size": 2, "budget_rows": 4, "item_emb": "random"}, _fit_reranker),
}
NAMES = sorted(RECIPES)


@pytest.fixture(scope="module")
def ds():
    return import_dataset("movielens", FIX, name="tiny", max_len=3)


@pytest.fixture(scope="module")
def fitted(ds, tmp_path_factory):
    """One fitted teacher per family (built on first use; BIGRec is skipped without the teacher extra)."""
    cache = {}
    mp = pytest.MonkeyPatch()
    mp.setenv("DLLM2REC_CACHE", str(tmp_path_factory.mktemp("cache")))

    def get(name):
        if name not in cache:
            cfg, fit = RECIPES[name]
            cache[name] = fit(get_teacher(name).from_config(cfg), ds, tmp_path_factory.mktemp(name))
        return cache[name]

    yield get
    mp.undo()


def test_every_registered_teacher_has_a_recipe():
    assert set(available("teacher")) == set(RECIPES)
    for name in NAMES:
        cls = get_teacher(name)
        assert issubclass(cls, Teacher) and cls.name == name and cls.kind


@pytest.mark.parametrize("name", NAMES)
def test_config_validates_and_names_a_bad_field(name):
    cls = get_teacher(name)
    cfg, _ = RECIPES[name]
    assert cls.from_config(cfg).config_dict() == cls.validate_config(cfg).model_dump(mode="json")
    assert cls.from_config({}).config_dict() == cls.config_cls().model_dump(mode="json")  # defaults are valid
    with pytest.raises(ConfigError) as e:
        cls.from_config(cfg | {"top_n": 0})
    msg = str(e.value)
    assert f"teacher '{name}' config field 'top_n'" in msg and "greater than or equal to 1" in msg
    assert "(got 0)" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"field 'no_such_field': Extra inputs are not permitted$"):
        cls.from_config({"no_such_field": 1})
    with pytest.raises(ConfigError, match="config must be a mapping"):
        cls.from_config([1, 2])


@pytest.mark.parametrize("name", NAMES)
def test_artifacts_validate_against_the_dataset(name, ds, fitted, tmp_path):
    t = fitted(name)
    art = t.artifacts(ds)
    assert isinstance(art, TeacherArtifacts)
    assert (art.n_items, art.n_rows) == (6, 5) and art.covered.any()
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in art.manifest]
    assert missing == []
    m = art.manifest
    assert (m["teacher"], m["kind"]) == (name, type(t).kind)
    assert m["dataset_interactions_fingerprint"] == ds.interactions_fingerprint()
    assert m["train_split_hash"] == ds.split_hash("train") and m["config"] == t.config_dict()
    art.save(tmp_path / "art", ds)
    back = TeacherArtifacts.load(tmp_path / "art", ds)
    np.testing.assert_array_equal(back.topk_ids, art.topk_ids)
    assert back.manifest["config"] == t.config_dict()
    # the manifest rebuilds the teacher (unfitted) with the same config
    assert from_manifest(back.manifest).config_dict() == t.config_dict()
    # other interactions (one training target changed): refused by the fingerprint
    tr = ds["train"]
    tg = tr.target.copy()
    tg[0] = (tg[0] + 1) % ds.n_items
    other = dataclasses.replace(ds, splits={**ds.splits, "train": dataclasses.replace(tr, target=tg)})
    with pytest.raises(ArtifactError, match="dataset_interactions_fingerprint"):
        TeacherArtifacts.load(tmp_path / "art", other)


@pytest.mark.parametrize("name", NAMES)
def test_rows_leave_the_other_rows_uncovered(name, ds, fitted):
    t = fitted(name)
    full, part = t.artifacts(ds), t.artifacts(ds, rows=[3, 0, 3])
    assert set(np.nonzero(part.covered)[0]) == {0, 3} & set(np.nonzero(full.covered)[0])
    c = part.covered
    np.testing.assert_array_equal(part.topk_ids[c], full.topk_ids[c])
    assert (part.topk_ids[~c] == -1).all() and np.isnan(part.topk_dist[~c]).all()
    with pytest.raises(ConfigError, match="training-row positions must lie in 0..4"):
        t.artifacts(ds, rows=[5])


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_is_metrics_or_a_one_line_refusal(name, ds, fitted):
    t = fitted(name)
    try:
        res = t.evaluate(ds, "test")
    except ConfigError as e:
        assert "\n" not in str(e) and name in str(e)
    else:
        assert res and all(k.split("/")[0] in ("full", "full-excl") for k in res)


@pytest.mark.parametrize("preset", ["ml-100k", "lastfm"])
def test_shipped_artifacts_still_load(preset):
    path = ROOT / "artifacts" / "teachers" / preset
    art = TeacherArtifacts.load(path)
    t = from_manifest(art.manifest, str(path))  # an older config: the fields it lacks take their defaults
    got, recorded = t.config_dict(), art.manifest["config"]
    assert t.name == art.manifest["teacher"] and {k: got[k] for k in recorded} == recorded
    try:
        ds = load_or_prepare(preset)
    except Dllm2recError:
        pytest.skip(f"dataset {preset} is not available here")
    TeacherArtifacts.load(path, ds)


def test_registry_refuses_a_class_that_is_not_a_teacher():
    class NotATeacher:
        def fit(self, dataset):
            return self

    with pytest.raises(TypeError, match="lacks config_cls, artifacts, from_config"):
        register_teacher("not-a-teacher")(NotATeacher)
    assert "not-a-teacher" not in available("teacher")


def test_llmemb_typed_config_mirrors_the_dataclass():
    from dllm2rec.teachers.llmemb import LLMEmbConfig, LLMEmbTeacherConfig

    dc = {f.name: f.default for f in dataclasses.fields(LLMEmbConfig)}
    assert LLMEmbTeacherConfig().model_dump() == dc


def test_teacher_list_shows_every_family_with_its_config():
    from dllm2rec.cli import app

    res = CliRunner().invoke(app, ["teacher", "list"])
    assert res.exit_code == 0, res.output
    for name in NAMES:
        assert f"\n{name}  (kind " in "\n" + res.output
    assert "  p: float = 0.8  # probability" in res.output and "stages: finetune -> generate -> ground" in res.output
    res = CliRunner().invoke(app, ["teacher", "list", "--json"])
    fams = {f["name"]: f for f in json.loads(res.output)}
    assert set(fams) == set(NAMES)
    assert {c["name"] for c in fams["synthetic"]["config"]} == {"p", "coverage", "dim", "top_n", "seed"}


def test_llmemb_cli_and_saved_models_go_through_the_typed_config(ds, fitted, tmp_path, capsys):
    from dllm2rec.cli import main
    from dllm2rec.teachers.llmemb import LLMEmbTeacher

    # refused before the dataset is read (the path does not exist): exit 2, one line naming the field
    with pytest.raises(SystemExit) as e:
        main(["teacher", "fit-llmemb", str(tmp_path / "nope"), "--out", str(tmp_path / "a"), "--dropout", "1.5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "teacher 'llm-emb' config field 'dropout': Input should be less than 1 (got 1.5)" in err
    t = fitted("llm-emb")
    t.save(tmp_path / "m", ds)
    assert LLMEmbTeacher.load(tmp_path / "m", ds).config_dict() == t.config_dict()
    meta = json.loads((tmp_path / "m" / "teacher.json").read_text())
    meta["config"]["adapter"] = "conv"
    (tmp_path / "m" / "teacher.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"m/teacher.json: teacher 'llm-emb' config field 'adapter': Input should "
                                          r"be 'mlp' or 'linear'"):
        LLMEmbTeacher.load(tmp_path / "m", ds)
