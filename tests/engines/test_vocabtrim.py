"""VocabTrim in the speculative engine (``draft_vocab``): the trimmed draft proposes the full draft's token whenever
the set holds it (else the best token in the set), greedy output stays the baseline's, the statistics and the
roofline show the smaller head, and options that cannot trim say so by name."""

import pytest
import torch

from rooflens.config import EngineSpec
from rooflens.data.prompts import make_prompts, training_prompts
from rooflens.engines import vocabulary
from rooflens.engines.base import EngineUnavailable, TokenClock
from rooflens.engines.decoding import eos_token_ids, last_logits, mask_eos, new_cache, truncated_model
from rooflens.engines.early_exit import training
from rooflens.engines.hf import HFEngine
from rooflens.engines.options.hf import HFOptions
from rooflens.engines.options.speculative import SpeculativeOptions
from rooflens.engines.registry import validate_engine_options
from rooflens.engines.speculative import SpeculativeEngine
from rooflens.engines.speculative.chooser import TokenChooser
from rooflens.engines.speculative.draft_cost import DraftForward
from rooflens.engines.speculative.proposers import DraftModelProposer
from rooflens.engines.speculative.vocabtrim import DraftVocab, TrimmedHead, trim_draft

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    """Rankings are cached per model: each test starts from an empty cache of its own."""
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "cache"))


def run(engine, prompt, n):
    clock = TokenClock(CPU)
    clock.start()
    out = engine.generate(prompt, n, clock)
    clock.stop()
    return out


def spec(model, **options):
    engine = SpeculativeEngine(SpeculativeOptions(**options), model)
    engine.prepare()
    return engine


def ranked_with_first(first: list[int], vocab_size: int) -> torch.Tensor:
    """Every id, ``first`` (distinct) leading in that order, the rest by id."""
    rest = [i for i in range(vocab_size) if i not in set(first)]
    return torch.tensor(first + rest)


@torch.inference_mode()
def proposals(model, vocab, prompt, g, chooser):
    proposer = DraftModelProposer(model, vocab)
    proposer.start()
    return proposer.propose(prompt, g, chooser)


# ---------------------------------------------------------------------------- the trimmed draft


def test_trimmed_draft_proposes_the_full_drafts_tokens_when_the_set_holds_them(tiny_llama):
    target = tiny_llama.model
    draft = truncated_model(target, 2)
    eos = eos_token_ids(target)
    chooser = TokenChooser(eos)
    prompt = make_prompts(tiny_llama, "synthetic", 1, 10, seed=4)
    full = proposals(draft, None, prompt, 6, chooser).tokens
    V = target.config.vocab_size
    first = list(dict.fromkeys(full.tolist())) + [t for t in range(40) if t not in full.tolist()][:24]
    vocab = DraftVocab.top(ranked_with_first(first, V), len(first), eos)
    trimmed = trim_draft(draft, vocab.ids)
    assert isinstance(trimmed.lm_head, TrimmedHead) and trimmed.lm_head.weight.shape == (len(first), 64)
    assert draft.lm_head is target.lm_head and target.lm_head.weight.shape[0] == V  # neither is touched
    assert torch.equal(proposals(trimmed, vocab, prompt, 6, chooser).tokens, full)


def test_outside_the_set_the_trimmed_draft_proposes_the_best_token_inside_it(tiny_llama):
    target = tiny_llama.model
    draft = truncated_model(target, 2)
    eos = eos_token_ids(target)
    prompt = make_prompts(tiny_llama, "synthetic", 1, 10, seed=5)
    logits = mask_eos(last_logits(draft, prompt, new_cache(draft))[0], eos)
    best = int(logits.argmax())
    perm = torch.randperm(target.config.vocab_size, generator=torch.Generator().manual_seed(0)).tolist()
    ids = [t for t in perm if t != best][:48]
    vocab = DraftVocab.top(ranked_with_first(ids, target.config.vocab_size), 48, eos)
    token = proposals(trim_draft(draft, vocab.ids), vocab, prompt, 1, TokenChooser(eos)).tokens
    in_set = torch.tensor(ids)
    assert int(token) != best and int(token) == int(in_set[logits[in_set].argmax()])


def test_sampled_drafts_have_a_distribution_over_the_set_only(tiny_llama):
    target = tiny_llama.model
    eos = eos_token_ids(target)
    vocab = DraftVocab.top(vocabulary.ranked_vocabulary(512, torch.arange(100), torch.arange(0)), 32, eos)
    draft = trim_draft(truncated_model(target, 2), vocab.ids)
    chooser = TokenChooser(eos, temperature=0.8, generator=torch.Generator().manual_seed(1))
    d = proposals(draft, vocab, make_prompts(tiny_llama, "synthetic", 1, 10, seed=6), 3, chooser)
    assert d.probs.shape == (3, 512)
    assert torch.allclose(d.probs.sum(-1), torch.ones(3))
    assert float(d.probs[:, ~vocab.member].abs().sum()) == 0.0 and bool(vocab.member[d.tokens].all())


# ---------------------------------------------------------------------------- the engine


@pytest.mark.parametrize(
    "options", [{"draft": "self:2", "draft_vocab": 16}, {"draft": "shape:tiny-llama", "seed": 1, "draft_vocab": 64}]
)
def test_greedy_output_with_a_trimmed_draft_equals_the_baseline(tiny_llama, options):
    prompt = make_prompts(tiny_llama, "synthetic", 1, 12, seed=7)
    ref = run(HFEngine(HFOptions(), tiny_llama), prompt, 20)
    assert torch.equal(run(spec(tiny_llama, gamma=3, **options), prompt, 20), ref)


def test_stats_roofline_and_fidelity_show_the_trimmed_head(tiny_llama):
    prompt = make_prompts(tiny_llama, "synthetic", 1, 12, seed=8)
    full, trimmed = spec(tiny_llama, draft="self:2", gamma=3), spec(tiny_llama, draft="self:2", gamma=3, draft_vocab=64)
    for engine in (full, trimmed):
        run(engine, prompt, 16)
    stats = {k: v.value for k, v in trimmed.stats().items()}
    assert stats["draft_vocab"] == 64 and 0.0 <= stats["draft_vocab_coverage"] <= 1.0
    assert (
        "VocabTrim" in stats["draft"] and "derived" in trimmed.stats()["draft_weight_bytes_saved_fraction"].description
    )
    H, V, elem = 64, 512, 4
    one = DraftForward.of(trimmed.draft.config, 32.0)  # a full-vocabulary forward of the 2-layer draft
    assert stats["draft_weight_bytes_saved_fraction"] == pytest.approx((V - 64) * H * elem / one.weight_bytes)
    assert stats["draft_flops_saved_fraction"] == pytest.approx(2.0 * (V - 64) * H / one.flops)
    assert "draft_vocab" not in full.stats() and full.fidelity() is None
    extra = SpeculativeEngine.extra_weight_bytes(trimmed.options, tiny_llama)
    assert extra == (64 * H * elem, "trimmed draft LM head (0.0 M params)")
    assert trimmed.fidelity().technique.startswith("VocabTrim")

    def head(engine):
        hints = engine.roofline_hints()
        per_pass = engine._counters.draft_passes / engine._counters.verify_passes
        return {op.name: op for op in hints.extra_ops}["draft_lm_head"].weight_bytes / per_pass, hints.note

    assert head(full)[0] == pytest.approx(V * H * elem) and "full LM head" in head(full)[1]
    assert head(trimmed)[0] == pytest.approx(64 * H * elem) and "64-token LM head" in head(trimmed)[1]


def test_options_that_cannot_trim_a_draft_say_so_by_name(tiny_llama):
    def problems(**options):
        return validate_engine_options(EngineSpec(name="speculative", options=options))

    assert problems(draft="self:2", draft_vocab=1024) == []
    assert "draft_vocab" in problems(proposer="prompt_lookup", draft_vocab=64)[0]
    for mode in ("draft_model", "early_exit"):
        said = problems(proposer="hf_assisted", hf_mode=mode, draft="self:2", draft_vocab=64)[0]
        assert "draft_vocab" in said and "HF assisted" in said
    assert "draft_vocab" in problems(proposer="hf_assisted", hf_mode="prompt_lookup", draft_vocab=64)[0]
    assert problems(draft="self:2", draft_vocab=0)[0].startswith("options.draft_vocab:")
    with pytest.raises(EngineUnavailable, match="options.draft_vocab: 513 exceeds the model's vocabulary"):
        spec(tiny_llama, draft="self:2", draft_vocab=513)


def test_the_ranking_is_shared_with_early_exit_and_cached(tiny_llama):
    assert training.ranked_vocabulary is vocabulary.ranked_vocabulary
    model = tiny_llama.model
    settings = vocabulary.RankSettings(prompts=4, prompt_len=8, gen_len=8)
    ranked = vocabulary.target_ranking(model, None, "tiny", settings)
    assert sorted(ranked.tolist()) == list(range(512))
    assert vocabulary.RANKING.cached(vocabulary.RANKING.path(model, "tiny", settings))
    assert torch.equal(vocabulary.target_ranking(model, None, "tiny", settings), ranked)
    seqs = vocabulary.greedy_sequences(model, training_prompts(model, None, 4, 8, 0), 8)
    assert set(ranked[:3].tolist()) <= set(seqs[:, 8:].reshape(-1).tolist())  # the most emitted come first


# ---------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_trimmed_self_draft_is_lossless_on_smollm2(smollm2):
    prompt = make_prompts(smollm2, "corpus", 1, 48, seed=2)
    ref = run(HFEngine(HFOptions(), smollm2), prompt, 24)
    engine = spec(smollm2, draft="self:8", gamma=4, draft_vocab=2048)
    assert torch.equal(run(engine, prompt, 24), ref)
    assert engine.stats()["draft_vocab"].value == 2048
