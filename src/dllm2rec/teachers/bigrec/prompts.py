"""BIGRec's Alpaca prompts (docs/teacher.md), one instruction/input pair per domain.

Games and movies are BIGRec's own strings; music (LastFM artists) and generic follow the same pattern. Titles are
double-quoted and joined by ``", "``; there is no space after the colon and the input ends with ``"\\n "`` exactly as
in BIGRec's data files. History is the last ``max_history`` (10) items, oldest first.

Spacing: BIGRec's ``train.py`` has one space after "request." and ``inference.py`` two. We use the train form for
both so the fine-tuned model sees at inference exactly what it was trained on (``TEMPLATE_INFERENCE_BIGREC`` keeps
the other string for reference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from dllm2rec.errors import ConfigError

TEMPLATE = ("Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request. \n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
TEMPLATE_INFERENCE_BIGREC = TEMPLATE.replace("request. ", "request.  ")


@dataclass(frozen=True)
class Domain:
    instruction: str
    input_prefix: str


DOMAINS: dict[str, Domain] = {
    "games": Domain(
        "Given a list of video games the user has played before, please recommend a new video game that the user "
        "likes to the user.",
        "The user has played the following video games before:"),
    "movies": Domain(
        "Given a list of movies the user has watched before, please recommend a new movie that the user likes to "
        "the user.",
        "The user has watched the following movies before:"),
    "music": Domain(
        "Given a list of artists the user has listened to before, please recommend a new artist that the user likes "
        "to the user.",
        "The user has listened to the following artists before:"),
    "generic": Domain(
        "Given a list of items the user has interacted with before, please recommend a new item that the user likes "
        "to the user.",
        "The user has interacted with the following items before:"),
}
# dataset meta "domain" values seen in the wild -> our domain keys
_ALIASES = {"game": "games", "video_games": "games", "movie": "movies", "movielens": "movies", "ml": "movies",
            "lastfm": "music", "artists": "music", "artist": "music", "items": "generic", "": "generic"}


def resolve_domain(name: str | None) -> str:
    key = (name or "generic").strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DOMAINS:
        raise ConfigError(f"unknown prompt domain '{name}'; choose one of: {', '.join(DOMAINS)}")
    return key


def dataset_domain(dataset, override: str | None = None) -> str:
    """The override if given, else ``dataset.meta['domain']``, else generic."""
    return resolve_domain(override if override else dataset.meta.get("domain"))


def clean_title(title: str) -> str:
    """BIGRec strips quotes/spaces from titles before quoting them (id2name processing)."""
    return title.strip().strip('"').strip()


def format_input(domain: str, history_titles: Sequence[str]) -> str:
    d = DOMAINS[resolve_domain(domain)]
    return d.input_prefix + ", ".join(f'"{clean_title(t)}"' for t in history_titles) + "\n "


def build_prompt(domain: str, history_titles: Sequence[str]) -> str:
    """Full prompt up to and including ``### Response:\\n`` (the model continues with the quoted title)."""
    d = DOMAINS[resolve_domain(domain)]
    return TEMPLATE.format(instruction=d.instruction, input=format_input(domain, history_titles))


def format_response(title: str) -> str:
    """The target response: the quoted title (EOS is appended as a token, not as text)."""
    return f'"{clean_title(title)}"'


def history_titles(dataset, split: str, pos: int, max_history: int = 10) -> list[str]:
    """Titles of row ``pos`` of ``split``: the last ``max_history`` items, oldest first."""
    s = dataset[split]
    n = int(s.len[pos])
    items = s.seq[pos, :n][-max_history:] if max_history > 0 else s.seq[pos, :n]
    return [dataset.titles[int(i)] for i in items]


def row_prompts(dataset, split: str, positions, domain: str, max_history: int = 10) -> list[str]:
    return [build_prompt(domain, history_titles(dataset, split, int(p), max_history)) for p in positions]
