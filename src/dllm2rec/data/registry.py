"""Named dataset presets and the entry points other code calls: :func:`prepare`, :func:`load_or_prepare`,
:func:`import_dataset`.

Presets (default source is tried in order; ``--source`` overrides):

* ``ml-100k`` — MovieLens 100K through the BIGRec recipe. Sources: ``../shared/data/movielens-100k`` (raw
  ``u.data``/``u.item``) relative to the working directory, else the copy shipped in the ``recbole`` wheel
  (``recbole/dataset_example/ml-100k``; found with ``importlib.util.find_spec`` without importing recbole).
* ``lastfm`` — LastFM (LLaRA) in the official layout, ``../shared/data/lastfm-llara``. Its splits are pandas
  pickles, which can run code when loaded: like every other command, ``prepare`` reads them only when the user
  passes ``allow_pickle=True`` (CLI ``--allow-pickle``); naming the preset is not permission
  (``dllm2rec.utils.untrusted`` is the gate).
* ``toys`` — Amazon Toys P5 ``sequential.txt`` (no timestamps → leave-one-out), ``../shared/data/amazon-toys-p5``.

Prepared datasets live in ``prepared/<name>`` (relative to the working directory) unless ``out`` is given.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from dllm2rec.data import importers, official, quality, recbole, recipes
from dllm2rec.data.schema import SeqDataset
from dllm2rec.errors import DataError
from dllm2rec.utils.untrusted import UntrustedFileError

PREPARED_ROOT = Path("prepared")
DEFAULT_MAX_LEN = 10
READERS = {**importers.READERS, "recbole": recbole.read_recbole}  # format -> reader of an interaction log
FORMATS = ("movielens", "recbole", "official", "amazon", "p5")


def _recbole_ml100k() -> Path | None:
    spec = importlib.util.find_spec("recbole")  # locates the package without importing it (it is heavy)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "dataset_example" / "ml-100k"
        if (p / "ml-100k.inter").is_file():
            return p
    return None


@dataclass(frozen=True)
class Preset:
    name: str
    format: str
    candidates: Callable[[], list[Path | None]]
    hint: str


PRESETS: dict[str, Preset] = {
    "ml-100k": Preset("ml-100k", "auto", lambda: [Path("../shared/data/movielens-100k"), _recbole_ml100k()],
                      "pass --source DIR (u.data + u.item, or RecBole ml-100k.inter/.item) or "
                      "`pip install recbole==1.2.1 --no-deps` (its wheel ships ML-100K)"),
    "lastfm": Preset("lastfm", "official", lambda: [Path("../shared/data/lastfm-llara")],
                     "pass --source DIR with train_data.df, Val_data.df, Test_data.df, id2name.txt "
                     "(pandas pickles: also pass --allow-pickle if you trust them)"),
    "toys": Preset("toys", "p5", lambda: [Path("../shared/data/amazon-toys-p5")],
                   "pass --source DIR with sequential.txt (+ datamaps.json)"),
}


def detect_format(source: Path) -> str:
    """Guess the format of a raw source directory (used by the ``ml-100k`` preset and ``import auto``)."""
    if (source / "u.data").is_file():
        return "movielens"
    if source.suffix == ".inter" or (source.is_dir() and any(source.glob("*.inter"))):
        return "recbole"
    if (source / "sequential.txt").is_file():
        return "p5"
    if any((source / n).is_file() for n in ("train_data.df", "val_data.csv", "Val_data.df")):
        return "official"
    if source.is_dir() and any(source.glob("meta_*.json*")):
        return "amazon"
    raise DataError(f"{source}: cannot tell the format (no u.data, *.inter, sequential.txt, official files "
                    f"or meta_*.json.gz)")


def import_dataset(fmt: str, source: str | Path, name: str | None = None, max_len: int = DEFAULT_MAX_LEN,
                   allow_pickle: bool = False, splits: Sequence[str] | None = None, recipe: str = "auto",
                   drop_duplicates: bool = False) -> SeqDataset:
    """Build (not save) a canonical dataset from ``source`` in format ``fmt`` (see :data:`FORMATS`).

    ``recipe``: one of :data:`dllm2rec.data.recipes.RECIPES` — ``auto`` (the source's own split when it has one,
    else BIGRec's temporal-global split with timestamps, else leave-one-out), ``temporal-global``,
    ``leave-one-out`` or ``file``; one that cannot apply is a DataError. ``drop_duplicates`` drops interactions
    repeating an earlier (user, item, timestamp); their count is in ``meta["duplicate_interactions"]`` either way.
    ``meta`` also gets ``recipe``, ``placeholder_titles``/``placeholder_title_ids`` and ``split_warnings``.
    """
    src = Path(source)
    if not src.exists():
        raise DataError(f"{src}: missing (source directory or file not found)")
    if recipe not in recipes.RECIPES:
        raise DataError(f"{src}: unknown recipe '{recipe}' (choose from {', '.join(recipes.RECIPES)})")
    if fmt == "auto":
        fmt = detect_format(src)
    name = name or (src.stem if src.is_file() else src.name)
    if fmt == "official":
        if recipe not in ("auto", "file"):
            raise DataError(f"{src}: recipe '{recipe}' cannot apply to the official layout (its files are already "
                            f"split into windows); use --recipe file")
        if drop_duplicates:
            raise DataError(f"{src}: --drop-duplicates needs an interaction log; the official layout holds windows")
        ds = official.import_official(src, name, allow_pickle=allow_pickle,
                                      splits=tuple(splits) if splits else ("train", "valid", "test"),
                                      max_len=max_len)
        ds.meta["recipe"] = "file"
        quality.record_placeholders(ds.meta, [i for i, t in enumerate(ds.titles) if quality.is_placeholder_title(t, i)])
    else:
        if splits and set(splits) != {"train", "valid", "test"}:
            raise DataError(f"{src}: --splits only applies to the official format")
        if fmt not in READERS:
            raise DataError(f"{src}: unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
        log = READERS[fmt](src)
        if isinstance(log, recipes.InteractionLog):
            dup = recipes.duplicate_mask(log)
            log.meta["duplicate_interactions"] = int(dup.sum())
            if drop_duplicates and dup.any():
                log = recipes.drop_events(log, dup)
                log.meta["duplicates_dropped"] = int(dup.sum())
        elif drop_duplicates:
            raise DataError(f"{src}: --drop-duplicates needs an interaction log; these files hold ready-made windows")
        ds = recipes.apply_recipe(log, recipe, name, max_len)
    ds.meta["split_warnings"] = quality.split_warnings(ds)
    return ds


def resolve_source(name: str, source: str | Path | None = None) -> Path:
    preset = PRESETS[name]
    if source is not None:
        return Path(source)
    for cand in preset.candidates():
        if cand is not None and cand.exists():
            return cand
    tried = ", ".join(str(c) for c in preset.candidates() if c is not None)
    raise DataError(f"{tried or name}: no source for preset '{name}' found; {preset.hint}")


def prepare(name: str, source: str | Path | None = None, out: str | Path | None = None,
            max_len: int = DEFAULT_MAX_LEN, allow_pickle: bool = False) -> SeqDataset:
    """Build preset ``name`` from its source and save it (atomically) to ``out`` (default ``prepared/<name>``).

    ``allow_pickle`` must come from the user's explicit ``--allow-pickle``: a pickled source is refused otherwise."""
    if name not in PRESETS:
        raise DataError(f"{name}: unknown dataset preset (choose from {', '.join(PRESETS)}; "
                        f"or use `dllm2rec data import FORMAT SOURCE`)")
    preset = PRESETS[name]
    src = resolve_source(name, source)
    try:
        ds = import_dataset(preset.format, src, name=name, max_len=max_len, allow_pickle=allow_pickle)
    except UntrustedFileError as e:  # reached from `train`/`run` too: say how to prepare it once
        raise UntrustedFileError(f"{e}; e.g. `dllm2rec data prepare {name} --allow-pickle`") from None
    ds.meta["preset"] = name
    ds.save(Path(out) if out is not None else PREPARED_ROOT / name)
    return ds


def load_or_prepare(name_or_path: str | Path, max_len: int = DEFAULT_MAX_LEN, allow_pickle: bool = False) -> SeqDataset:
    """A prepared directory → load it; a preset name → load ``prepared/<name>`` or prepare it first."""
    p = Path(name_or_path)
    if (p / "manifest.json").is_file():
        return SeqDataset.load(p)
    name = str(name_or_path)
    if name in PRESETS:
        cached = PREPARED_ROOT / name
        if (cached / "manifest.json").is_file():
            ds = SeqDataset.load(cached)
            if ds.max_len == max_len:
                return ds
        return prepare(name, max_len=max_len, allow_pickle=allow_pickle)
    if p.exists():
        raise DataError(f"{p / 'manifest.json'}: missing (not a prepared dataset; run `dllm2rec data import`)")
    raise DataError(f"{name}: neither a prepared dataset directory nor a preset ({', '.join(PRESETS)})")
