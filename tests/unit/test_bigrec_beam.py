import pytest
import torch

from dllm2rec.teachers.bigrec.beam import beam_search, build_title_trie
from dllm2rec.teachers.bigrec.prompts import format_response, row_prompts
from dllm2rec.teachers.bigrec.tiny import make_tiny_llama, tiny_dataset
from dllm2rec.teachers.models import load_causal_lm, load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ref = resolve_model(str(make_tiny_llama(tmp_path_factory.mktemp("m") / "m", seed=1)))
    tok = load_tokenizer(ref)
    ds = tiny_dataset()
    prompts = row_prompts(ds, "train", range(5), "movies")
    enc = tok(prompts, return_tensors="pt", padding=True)
    return load_causal_lm(ref), tok, ds, enc


def test_prompt_kv_reuse_equals_naive_per_beam_prompt(setup):
    model, tok, ds, enc = setup
    a = beam_search(model, enc["input_ids"], enc["attention_mask"], 3, 8, tok.eos_token_id, tok.pad_token_id)
    b = beam_search(model, enc["input_ids"], enc["attention_mask"], 3, 8, tok.eos_token_id, tok.pad_token_id,
                    reuse_prompt_cache=False)
    assert a.tokens == b.tokens
    assert torch.allclose(torch.tensor(a.scores), torch.tensor(b.scores), atol=1e-5)


def test_shared_prefix_is_found_and_changes_nothing(setup):
    from dllm2rec.teachers.bigrec.beam import shared_prefix_len

    model, tok, ds, enc = setup
    P = shared_prefix_len(enc["input_ids"], enc["attention_mask"])
    assert P > 16  # the Alpaca template + domain input prefix
    a = beam_search(model, enc["input_ids"], enc["attention_mask"], 3, 8, tok.eos_token_id, tok.pad_token_id)
    b = beam_search(model, enc["input_ids"], enc["attention_mask"], 3, 8, tok.eos_token_id, tok.pad_token_id,
                    share_prefix=True)
    assert a.tokens == b.tokens
    assert torch.allclose(torch.tensor(a.scores), torch.tensor(b.scores), atol=1e-4)
    g1 = beam_search(model, enc["input_ids"], enc["attention_mask"], 1, 8, tok.eos_token_id, tok.pad_token_id)
    g2 = beam_search(model, enc["input_ids"], enc["attention_mask"], 1, 8, tok.eos_token_id, tok.pad_token_id,
                     share_prefix=True)
    assert g1.tokens == g2.tokens


@pytest.mark.parametrize("share", [False, True])
def test_matches_hf_generate_one_prompt_at_a_time(setup, share):
    model, tok, ds, enc = setup
    res = beam_search(model, enc["input_ids"], enc["attention_mask"], 3, 8, tok.eos_token_id, tok.pad_token_id,
                      share_prefix=share)
    prompts = tok.batch_decode(enc["input_ids"], skip_special_tokens=True)
    for i, p in enumerate(prompts):
        e = tok(p, return_tensors="pt")
        g = model.generate(**e, num_beams=3, num_return_sequences=3, max_new_tokens=8, do_sample=False,
                           pad_token_id=tok.pad_token_id)
        hf = []
        for row in g[:, e["input_ids"].shape[1]:].tolist():
            # HF pads finished beams after their EOS; the model may also emit <pad> as a real token
            hf.append(row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
        assert hf == res.tokens[i]


@pytest.mark.parametrize("beams", [1, 4, 30])
def test_constrained_beams_are_catalogue_items(setup, beams):
    model, tok, ds, enc = setup
    trie = build_title_trie(tok, ds.titles)
    res = beam_search(model, enc["input_ids"], enc["attention_mask"], beams, 64, tok.eos_token_id, tok.pad_token_id,
                      trie=trie, length_penalty=0.0)
    for b in range(enc["input_ids"].shape[0]):
        assert len(res.tokens[b]) == min(beams, ds.n_items)
        seen = set()
        for toks, items, lp in zip(res.tokens[b], res.items[b], res.logprobs[b]):
            assert len(items) == 1
            it = items[0]
            assert tok.decode(toks) == format_response(ds.titles[it])
            assert it not in seen
            seen.add(it)
            assert lp <= 0
        # length_penalty 0: beams come out ordered by total log-probability
        assert res.logprobs[b] == sorted(res.logprobs[b], reverse=True)


def test_trie_merges_duplicate_titles():
    class Tok:
        eos_token_id = 9

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[ord(c) % 7 for c in t] for t in texts]}

    trie = build_title_trie(Tok(), ["ab", "ab", "ac"])
    ids = [ord(c) % 7 for c in '"ab"'] + [9]
    assert trie.items(ids) == [0, 1]
    assert trie.allowed([]) == [ord('"') % 7]


def test_finished_rows_leave_the_batch_without_changing_results(setup, monkeypatch):
    import dllm2rec.teachers.bigrec.beam as bm

    model, tok, ds, enc = setup
    eos = tok.eos_token_id
    lens = enc["attention_mask"].sum(1)
    assert len(set(lens.tolist())) > 1
    thr = int(lens.max())
    sizes = []
    orig = bm._forward

    def spy(m, ids, mask, pos, cache):
        # a random model ignores its prompt; push EOS from a fixed position on, so rows with longer prompts
        # finish earlier than the others
        sizes.append(ids.shape[0])
        logits, cache = orig(m, ids, mask, pos, cache)
        logits[:, eos] += 100.0 * (pos[:, -1] >= thr).float()
        return logits, cache

    monkeypatch.setattr(bm, "_forward", spy)
    batched = beam_search(model, enc["input_ids"], enc["attention_mask"], 3, 12, eos, tok.pad_token_id)
    B = enc["input_ids"].shape[0]
    assert sizes[0] == B and min(sizes[1:]) < 3 * B  # some rows finished early and left the batch
    for b in range(enc["input_ids"].shape[0]):
        m = enc["attention_mask"][b].bool()
        one = beam_search(model, enc["input_ids"][b:b + 1, m], enc["attention_mask"][b:b + 1, m], 3, 12, eos,
                          tok.pad_token_id)
        assert one.tokens[0] == batched.tokens[b]
        assert torch.allclose(torch.tensor(one.scores[0]), torch.tensor(batched.scores[b]), atol=1e-4)
