from dllm2rec.data.schema import SPLITS, SeqDataset, Split, make_split

__all__ = ["SPLITS", "SeqDataset", "Split", "make_split"]
