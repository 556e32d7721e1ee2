from dllm2rec.data.registry import PRESETS, import_dataset, load_or_prepare, prepare
from dllm2rec.data.schema import SPLITS, SeqDataset, Split, make_split

__all__ = ["SPLITS", "SeqDataset", "Split", "make_split", "PRESETS", "import_dataset", "load_or_prepare", "prepare"]
