import pytest

from dllm2rec.errors import ConfigError
from dllm2rec.teachers.bigrec.prompts import (build_prompt, dataset_domain, format_input, format_response,
                                              history_titles, resolve_domain)
from dllm2rec.teachers.bigrec.tiny import tiny_dataset


def test_games_prompt_is_bigrec_alpaca_format():
    p = build_prompt("games", ["Halo 3", '"Portal"'])
    assert p == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request. \n\n### Instruction:\n"
        "Given a list of video games the user has played before, please recommend a new video game that the user "
        "likes to the user.\n\n### Input:\nThe user has played the following video games before:"
        '"Halo 3", "Portal"\n \n\n### Response:\n')


def test_movie_music_generic_inputs_and_response():
    assert format_input("movies", ["Toy Story (1995)"]) == \
        'The user has watched the following movies before:"Toy Story (1995)"\n '
    assert format_input("lastfm", ["Muse", "Coldplay"]).startswith('The user has listened to the following artists')
    assert "interacted with" in build_prompt("generic", ["a"])
    assert format_response(' "Heat (1995)" ') == '"Heat (1995)"'


def test_domain_resolution_and_override():
    ds = tiny_dataset()
    assert dataset_domain(ds) == "movies"
    assert dataset_domain(ds, "games") == "games"
    assert resolve_domain(None) == "generic"
    with pytest.raises(ConfigError):
        resolve_domain("cooking")


def test_history_is_last_items_oldest_first():
    ds = tiny_dataset(max_len=10)
    s = ds["train"]
    r = int((s.len >= 5).nonzero()[0][0])
    n = int(s.len[r])
    titles = history_titles(ds, "train", r, max_history=3)
    assert titles == [ds.titles[int(i)] for i in s.seq[r, n - 3:n]]
