"""The early_exit engine's parts against independent references (the contract test covers its generate())."""

import math

import pytest
import torch

from factories import clocked_generate
from rooflens.config import EngineSpec, ModelSpec
from rooflens.data.prompts import make_prompts
from rooflens.engines.base import EngineUnavailable
from rooflens.engines.decoding import LayerStack, forward_layers, new_cache, write_kv
from rooflens.engines.early_exit import EarlyExitEngine, EarlyExitOptions
from rooflens.engines.early_exit.calibration import NEVER_EXIT, Calibration, Trial, choose_threshold
from rooflens.engines.early_exit.decode_state import PhaseLap
from rooflens.engines.early_exit.draft_head import DraftHead
from rooflens.engines.early_exit.predictors import ExitPredictors, exit_features, threshold_logit
from rooflens.engines.early_exit.proposers import lookup_candidates, mixed_candidates
from rooflens.engines.early_exit.training import (
    TrainSettings,
    artifact_path,
    load_artifacts,
    load_or_train,
    simulate_exits,
)
from rooflens.engines.options.early_exit import parse_draft
from rooflens.engines.registry import build_engine, validate_engine_options
from rooflens.models.loader import load_model
from rooflens.roofline.analytic import ModelShape, OpCost, decode_cost

CPU = torch.device("cpu")
TINY = dict(
    train_prompts=3,
    train_prompt_len=6,
    train_gen_len=4,
    predictor_epochs=5,
    draft_vocab=64,
    predictor_hidden=8,
    draft_epochs=1,
)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "cache"))


def _generate(engine, prompts, n=6):
    return clocked_generate(engine, prompts, n)


# ---------------------------------------------------------------------------- toolkit: KV fill


@torch.no_grad()
def test_write_kv_equals_what_the_layer_writes(tiny_llama):
    """K/V written from a layer's input hidden state equal the layer's own cache entry for that input."""
    stack = LayerStack.of(tiny_llama.model)
    ids = make_prompts(tiny_llama, "synthetic", 1, 5, seed=1)
    pos = torch.arange(5)
    full, outs = new_cache(tiny_llama.model), {}
    forward_layers(stack, ids, full, pos, on_layer=lambda i, h: outs.__setitem__(i, h) or False)
    part = new_cache(tiny_llama.model)
    forward_layers(stack, ids, part, pos, on_layer=lambda i, h: i == 0)  # layer 0 only
    write_kv(stack, outs[0], pos, part, range(1, len(stack.layers)))  # layer 1's real input is layer 0's output
    assert [part.layers[j].keys.shape[2] for j in range(len(stack.layers))] == [5] * len(stack.layers)
    torch.testing.assert_close(part.layers[1].keys, full.layers[1].keys)
    torch.testing.assert_close(part.layers[1].values, full.layers[1].values)
    assert not torch.allclose(part.layers[2].keys, full.layers[2].keys)  # layer 2 got layer 0's state, not its own


# ---------------------------------------------------------------------------- proposers


def test_parse_draft_names_what_is_allowed():
    assert parse_draft("head") == ("head", None)
    assert parse_draft("self:7") == ("self", 7)
    for bad in ("eagle", "self:0", "self:x", ""):
        with pytest.raises(ValueError, match="allowed: head, lookup, head\\+lookup, self:<k>"):
            parse_draft(bad)


def test_lookup_candidates_follow_earlier_ngrams_then_frequent_tokens():
    ranked = torch.tensor([9, 7, 8, 1, 2, 3])
    seq = torch.tensor([5, 6, 7, 4, 5, 6, 8, 1, 5, 6])  # "5 6" was followed by 7, later by 8: latest first
    assert lookup_candidates(seq, 4, ranked).tolist() == [8, 7, 9, 1]
    assert lookup_candidates(torch.tensor([1, 2, 3]), 2, ranked).tolist() == [9, 7]  # no match: frequent tokens
    cands = mixed_candidates(seq, [3, 8, 2], 4, ranked)
    assert cands.tolist() == [8, 7, 3, 2]  # ceil(4/2) lookup tokens, then the head's, without repeats


# ---------------------------------------------------------------------------- predictors


def test_predictor_single_call_equals_the_batched_training_path():
    torch.manual_seed(0)
    pred = ExitPredictors(num_layers=5, k=3, hidden=16)
    feats = torch.randn(5, 7, 9)
    batched = pred.logits_all(feats)
    for layer in range(5):
        for j in range(7):
            torch.testing.assert_close(pred.logit(layer, feats[layer, j]), batched[layer, j])
    for t in (0.1, 0.5, 0.93):
        assert 1 / (1 + math.exp(-threshold_logit(t))) == pytest.approx(t)
    assert threshold_logit(0.0) == -math.inf and threshold_logit(1.0) == math.inf


def test_exit_features_are_specee_logits_softmax_and_its_change():
    h = torch.randn(6)
    rows = torch.randn(3, 6)
    f1, p1 = exit_features(h, rows, None)
    logits = rows @ h
    torch.testing.assert_close(f1[:3], logits)
    torch.testing.assert_close(f1[3:6], torch.softmax(logits, 0))
    torch.testing.assert_close(f1[6:], p1)  # first checked layer: the change is the softmax itself
    f2, p2 = exit_features(h * 2, rows, p1)
    torch.testing.assert_close(f2[6:], p2 - p1)


def test_simulated_exits_take_the_first_verified_firing_layer():
    labels = torch.tensor([[False, True], [True, True], [True, True]])  # [L=3, N=2]
    logits = torch.tensor([[5.0, 5.0], [5.0, -5.0], [0.0, 0.0]])
    verified = torch.ones(3, 2, dtype=torch.bool)
    acc, layers = simulate_exits(logits, labels, verified, 0.5)
    assert (acc, layers) == (0.5, 1.0)  # position 0 exits wrongly at layer 0, position 1 rightly
    verified[0, 0] = False
    assert simulate_exits(logits, labels, verified, 0.5) == (1.0, 1.5)


# ---------------------------------------------------------------------------- draft head


@torch.no_grad()
def test_draft_head_one_step_at_a_time_equals_the_whole_sequence(tiny_llama):
    """The head's own KV cache: incremental pairs give the logits of one causal pass over all pairs."""
    stack = LayerStack.of(tiny_llama.model)
    torch.manual_seed(0)
    head = DraftHead(stack, torch.arange(40)).eval()
    T, H = 7, tiny_llama.model.config.hidden_size
    emb, prev = torch.randn(1, T, H), torch.randn(1, T, H)
    whole = head(emb, prev, torch.arange(T).view(1, -1))
    cache = head.new_cache()
    head(emb[:, :3], prev[:, :3], torch.arange(3).view(1, -1), cache)
    steps = [head(emb[:, t : t + 1], prev[:, t : t + 1], torch.tensor([[t]]), cache) for t in range(3, T)]
    torch.testing.assert_close(torch.cat(steps, 1), whole[:, 3:], rtol=1e-4, atol=1e-5)
    assert whole.shape == (1, T, 40)


# ---------------------------------------------------------------------------- training and its cache


@pytest.mark.slow
def test_training_is_cached_by_model_and_settings(tiny_llama, tmp_path):
    model = tiny_llama.model
    s = TrainSettings.from_options(EarlyExitOptions(**TINY))
    art, path, trained = load_or_train(model, None, "tiny", s)
    assert trained and path.is_file() and path.parent == tmp_path / "cache" / "early-exit"
    again, path2, trained2 = load_or_train(model, None, "tiny", s)
    assert (path2, trained2) == (path, False)
    feats = torch.randn(len(LayerStack.of(model).layers), 4, 3 * s.k)
    torch.testing.assert_close(again.predictors.logits_all(feats), art.predictors.logits_all(feats))
    assert torch.equal(again.draft.vocab_ids, art.draft.vocab_ids) and torch.equal(again.ranked_vocab, art.ranked_vocab)
    assert artifact_path(model, "tiny", TrainSettings(**{**s.__dict__, "seed": 1})) != path
    other = load_model(ModelSpec(source="shape", id="tiny-llama"), CPU, torch.float32, seed=1)  # other weights
    assert artifact_path(other.model, "tiny", s) != path
    report = art.report
    assert 0 <= report["candidate_hit_rate_train"] <= 1 and 1 <= report["oracle_mean_layers"] <= len(
        LayerStack.of(model).layers
    )
    path.write_bytes(b"not a checkpoint")  # a damaged file is replaced by a fresh training
    assert load_or_train(model, None, "tiny", s)[2] is True
    assert load_artifacts(model, path).settings == s


@pytest.mark.slow
def test_a_training_the_cache_cannot_take_is_kept_for_the_run(tiny_llama, tmp_path, monkeypatch):
    from rooflens.engines.artifacts import ArtifactKind

    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "not-a-folder" / "cache"))  # every write there fails
    monkeypatch.setattr(ArtifactKind, "in_memory", {})
    model = tiny_llama.model
    s = TrainSettings.from_options(EarlyExitOptions(**TINY))
    art, path, trained = load_or_train(model, None, "tiny", s)
    assert trained and not path.exists()
    assert art.report["cache"].startswith(f"{path} could not be written") and "kept in memory" in art.report["cache"]
    again, _, trained_again = load_or_train(model, None, "tiny", s)  # the next engine of the run: no new training
    assert not trained_again
    feats = torch.randn(len(LayerStack.of(model).layers), 4, 3 * s.k)
    torch.testing.assert_close(again.predictors.logits_all(feats), art.predictors.logits_all(feats))


def test_training_settings_come_from_the_options_train_fields_only():
    """The options hold the defaults; the training settings (the cache key) read exactly ``train_fields``."""
    base = EarlyExitOptions(**TINY)
    assert (
        TrainSettings.from_options(EarlyExitOptions()).prompts == EarlyExitOptions.model_fields["train_prompts"].default
    )
    changed = {"draft": "lookup", "k": 3, "seed": 5, "train_prompts": 4, "train_prompt_len": 7, "train_gen_len": 5}
    changed |= {"draft_vocab": 65, "draft_epochs": 2, "predictor_epochs": 6, "predictor_hidden": 9}
    assert set(changed) == set(EarlyExitOptions.train_fields)
    for name, value in changed.items():
        other = base.model_copy(update={name: value})
        assert TrainSettings.from_options(other) != TrainSettings.from_options(base), name
    for name, value in {"threshold": 0.9, "schedule": "all", "audit": False, "precheck": False}.items():
        assert TrainSettings.from_options(base.model_copy(update={name: value})) == TrainSettings.from_options(base)


# ---------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("skipped_kv", ["deferred", "fill", "unwritten"])
def test_threshold_one_never_exits_and_equals_hf(tiny_llama, skipped_kv):
    """No predictor can fire above 1: every step runs every layer, so the output is the baseline's."""
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=5)
    expected = _generate(build_engine(EngineSpec(name="hf"), tiny_llama), prompts, 8)
    engine = build_engine(
        EngineSpec(name="early_exit", options={**TINY, "threshold": 1.0, "skipped_kv": skipped_kv}), tiny_llama
    )
    engine.prepare()
    assert torch.equal(_generate(engine, prompts, 8), expected)
    stats = engine.stats()
    L = tiny_llama.model.config.num_hidden_layers
    assert stats["exit_rate"].value == 0 and stats["layers_executed_per_token"].value == L
    assert stats["audit_predictor_precision"].value == "n/a"  # nothing fired
    assert engine.roofline_hints().layers_executed == L


def test_exits_are_counted_and_audited(tiny_llama):
    engine = build_engine(
        EngineSpec(name="early_exit", options={**TINY, "draft": "self:1", "threshold": 0.0, "schedule": "all"}),
        tiny_llama,
    )
    engine.prepare()
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=2)
    _generate(engine, prompts, 12)
    s = {k: v.value for k, v in engine.stats().items()}
    L = tiny_llama.model.config.num_hidden_layers
    assert s["decode_steps"] == 11 and sum(s["layers_run_hist"]) == 11
    assert s["layers_executed_per_token"] == pytest.approx(sum(n * c for n, c in enumerate(s["layers_run_hist"])) / 11)
    assert s["exit_rate"] == pytest.approx(sum(s["layers_run_hist"][:L]) / 11)
    assert s["exit_rate"] > 0  # threshold 0: the first layer whose argmax is a candidate exits
    assert 0 <= s["audit_exit_precision"] <= 1 and 1 <= s["oracle_mean_layers"] <= L
    assert (
        s["predictor_calls_per_token"]
        >= s["predictor_fired_per_token"]
        >= s["exit_head_calls_per_token"]
        >= s["exit_rate"]
    )
    assert s["predictor_fired_per_token"] == pytest.approx(
        s["exit_head_calls_per_token"] + s["precheck_rejects_per_token"]
    )
    hints = engine.roofline_hints()
    assert {op.name for op in hints.extra_ops} >= {"draft_self_head", "exit_predictors"}


def test_schedule_is_offline_layers_and_neighbours_of_recent_exits(tiny_llama):
    from collections import deque

    engine = build_engine(EngineSpec(name="early_exit", options={**TINY, "online_radius": 1}), tiny_llama)
    engine.prepare()
    engine._offline = {0}
    assert engine._scheduled(deque()) == {0}
    assert engine._scheduled(deque([2])) == {0, 1, 2}  # the last layer (3) is never checked
    engine2 = build_engine(EngineSpec(name="early_exit", options={**TINY, "schedule": "all"}), tiny_llama)
    engine2.prepare()
    assert engine2._scheduled(deque()) == {0, 1, 2}


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "options, message",
    [
        ({"draft": "eagle"}, "options.draft: draft 'eagle' does not exist (allowed: head, lookup"),
        ({"threshold": 1.5}, "options.threshold: threshold 1.5 is outside [0, 1] (or use auto)"),
        ({"threshold": -0.1}, "options.threshold: threshold -0.1 is outside [0, 1] (or use auto)"),
        ({"k": 8, "draft_vocab": 4}, "k (8) is larger than the draft head's trimmed vocabulary (draft_vocab 4)"),
        ({"skipped_kv": "copy"}, "options.skipped_kv: Input should be 'deferred', 'fill' or 'unwritten'"),
        ({"thresold": 0.5}, "options.thresold: unknown option for engine 'early_exit'"),
    ],
)
def test_bad_options_name_the_field_and_what_is_allowed(options, message):
    problems = validate_engine_options(EngineSpec(name="early_exit", options=options))
    assert any(message in p for p in problems), problems


def test_model_dependent_problems_make_the_cell_unavailable(tiny_llama):
    gpt2 = load_model(ModelSpec(source="shape", id="tiny-gpt2"), CPU, torch.float32)
    reason = EarlyExitEngine.unavailable_reason(CPU, gpt2)
    assert reason and "cannot walk the layer stack of model type 'gpt2'" in reason and "supported: llama" in reason
    assert EarlyExitEngine.unavailable_reason(CPU, tiny_llama) is None
    L, V = tiny_llama.model.config.num_hidden_layers, tiny_llama.model.config.vocab_size
    for options, message in (
        ({"draft": f"self:{L}"}, f"options.draft: 'self:{L}' needs 1 <= k < {L}"),
        ({"draft_vocab": V + 1}, f"options.draft_vocab: {V + 1} exceeds the model's vocabulary"),
    ):
        engine = build_engine(EngineSpec(name="early_exit", options={**TINY, **options}), tiny_llama)
        with pytest.raises(EngineUnavailable, match=message.replace("+", "\\+")):
            engine.prepare()


def test_batch_above_one_is_refused(tiny_llama):
    engine = build_engine(EngineSpec(name="early_exit", options=TINY), tiny_llama)
    engine.prepare()
    with pytest.raises(ValueError, match="batch size 1 only"):
        _generate(engine, make_prompts(tiny_llama, "synthetic", 2, 8, seed=0))


# ---------------------------------------------------------------------------- roofline


def test_extra_ops_add_their_bytes_and_flops_to_the_decode_pass(tiny_llama):
    shape = ModelShape.from_config(tiny_llama.model.config)
    base = decode_cost(shape, batch=1, context_len=10, layers_executed=2.5)
    op = OpCost("draft_head", "model", 1000.0, 4000.0, 0.0, 0.0, 1000.0)
    more = decode_cost(shape, batch=1, context_len=10, layers_executed=2.5, extra_ops=(op,))
    assert more.bytes == pytest.approx(base.bytes + 4000.0) and more.flops == pytest.approx(base.flops + 1000.0)


@pytest.mark.parametrize("draft", ["head+lookup", "self:1"])
def test_precheck_never_changes_the_output(tiny_llama, draft):
    """The trimmed-vocabulary pre-check only skips full LM heads whose verification would fail."""
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=4)
    outs, stats = [], []
    for precheck in (True, False):
        opts = {**TINY, "draft": draft, "threshold": 0.0, "schedule": "all", "precheck": precheck, "draft_vocab": 32}
        engine = build_engine(EngineSpec(name="early_exit", options=opts), tiny_llama)
        engine.prepare()
        outs.append(_generate(engine, prompts, 16))
        stats.append({k: v.value for k, v in engine.stats().items()})
    assert torch.equal(outs[0], outs[1])
    assert stats[0]["exit_rate"] == stats[1]["exit_rate"]
    assert stats[1]["precheck_rejects_per_token"] == 0
    assert stats[0]["exit_head_calls_per_token"] <= stats[1]["exit_head_calls_per_token"]


# ---------------------------------------------------------------------------- threshold auto (calibration)


def _trials(worst_by_threshold):
    """A decode_at stub: the worst prompt's agreement per threshold (a second prompt agrees fully), and a log."""
    seen = []

    def decode_at(t):
        seen.append(t)
        return Trial(t, [1.0, worst_by_threshold[t]], exit_rate=1.0 - t)

    return decode_at, seen


def test_calibration_keeps_the_lowest_threshold_before_the_first_failure():
    decode_at, seen = _trials({0.99: 1.0, 0.9: 0.97, 0.7: 0.95, 0.5: 0.6, 0.3: 1.0})
    cal = choose_threshold(decode_at, 0.95, prompts=2, tokens=8, thresholds=(0.5, 0.99, 0.3, 0.7, 0.9), margin=0)
    assert cal.threshold == 0.7 and cal.reached
    assert seen == [0.99, 0.9, 0.7, 0.5]  # strictest first; stops at the first failure (0.3 never tried)
    assert "auto 0.7" in cal.describe() and "0.5 -> worst 0.60" in cal.describe()


def test_calibration_margin_steps_back_towards_the_strict_end():
    decode_at, _ = _trials({0.99: 1.0, 0.9: 0.97, 0.7: 0.95, 0.5: 0.6})
    cal = choose_threshold(decode_at, 0.95, prompts=2, tokens=8, thresholds=(0.99, 0.9, 0.7, 0.5), margin=1)
    assert (cal.threshold, cal.lowest_passing) == (0.9, 0.7)
    assert "auto 0.9 (lowest passing 0.7)" in cal.describe()
    decode_at, _ = _trials({0.99: 1.0, 0.9: 0.5})
    only_strictest = choose_threshold(decode_at, 0.95, prompts=2, tokens=8, thresholds=(0.99, 0.9), margin=1)
    assert only_strictest.threshold == NEVER_EXIT and not only_strictest.reached
    assert only_strictest.describe().startswith("exits DISABLED")


def test_calibration_that_never_reaches_the_target_turns_exits_off_and_says_so():
    decode_at, seen = _trials({0.99: 0.9, 0.5: 1.0})
    cal = choose_threshold(decode_at, 0.95, prompts=2, tokens=8, thresholds=(0.99, 0.5))
    assert cal.threshold == NEVER_EXIT and not cal.reached and seen == [0.99]
    assert cal.describe().startswith("NO threshold reached agreement 0.95: exits DISABLED")


def test_calibration_judges_the_worst_prompt_not_the_mean():
    cal = choose_threshold(lambda t: Trial(t, [1.0, 1.0, 0.9], 0.5), 0.95, prompts=3, tokens=8, thresholds=(0.9,))
    assert not cal.reached  # mean 0.97 would pass


def test_calibration_round_trips_through_its_cache_form():
    decode_at, _ = _trials({0.99: 1.0, 0.9: 0.5})
    cal = choose_threshold(decode_at, 0.95, prompts=2, tokens=8, thresholds=(0.99, 0.9))
    assert Calibration.from_dict(cal.to_dict()) == cal


@pytest.mark.slow
def test_threshold_auto_is_calibrated_cached_and_reported(tiny_llama, tmp_path):
    """auto: a threshold from the calibration decodes, in stats and fidelity; the second engine reads the cache."""
    engine = build_engine(EngineSpec(name="early_exit", options={"k": 3, **TINY}), tiny_llama)
    engine.prepare()
    cal = engine.calibration
    assert cal is not None and engine.threshold == cal.threshold and cal.trials
    assert cal.threshold == NEVER_EXIT or all(t.worst >= 0.95 for t in cal.trials if t.threshold >= cal.threshold)
    _generate(engine, make_prompts(tiny_llama, "synthetic", 1, 6, seed=3))
    stats = engine.stats()
    assert stats["threshold"].value == cal.threshold
    assert stats["threshold_choice"].value == cal.describe()
    assert ("threshold_warning" in stats) == (not cal.reached)
    assert any(d.setting == "threshold" and d.here == cal.describe() for d in engine.fidelity().deviations)
    again = build_engine(EngineSpec(name="early_exit", options={"k": 3, **TINY}), tiny_llama)
    again.prepare()
    assert again.calibration == cal
    explicit = build_engine(EngineSpec(name="early_exit", options={"k": 3, "threshold": 0.3, **TINY}), tiny_llama)
    explicit.prepare()
    assert explicit.calibration is None and explicit.threshold == 0.3


# ---------------------------------------------------------------------------- skipped_kv: deferred


@torch.no_grad()
def test_deferred_kv_cache_holds_only_the_full_models_entries(tiny_llama):
    """Many exits (threshold 0, every layer), yet every K/V the cache holds equals the full model's on the same
    tokens, and each layer holds a prefix of the positions (the owed rows are the tail)."""
    opts = {**TINY, "draft": "self:1", "threshold": 0.0, "schedule": "all", "skipped_kv": "deferred"}
    engine = build_engine(EngineSpec(name="early_exit", options=opts), tiny_llama)
    engine.prepare()
    prompt = make_prompts(tiny_llama, "synthetic", 1, 8, seed=2)
    with torch.inference_mode():
        gen = engine._prefill(prompt, 14)
        lap = PhaseLap(CPU, {})
        for _ in range(13):
            engine._decode_step(gen, lap)
    assert any(e is not None for e in gen.exits_log)
    stack = LayerStack.of(tiny_llama.model)
    full = new_cache(tiny_llama.model)
    T = gen.length - 1  # the last token has not been fed yet
    forward_layers(stack, gen.tokens[:, :T], full, torch.arange(T))
    lengths = [gen.cache.get_seq_length(j) for j in range(len(stack.layers))]
    owed = gen.pending.rows if gen.pending is not None else 0
    assert all(n in (T, T - owed) for n in lengths) and lengths[0] == T
    for j, n in enumerate(lengths):
        torch.testing.assert_close(gen.cache.layers[j].keys, full.layers[j].keys[:, :, :n], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gen.cache.layers[j].values, full.layers[j].values[:, :, :n], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_threshold_auto_keeps_smollm2s_output_on_held_out_text(smollm2):
    """The quality the defaults promise, on text the training never read (heldout.txt), prompt 96, 48 tokens: the
    defaults' threshold and KV policy with the cheaper lookup draft (its training skips the corpus pass and the
    draft head, which keeps this test under a minute; benchmarks/early_exit_heldout.py checks the default draft)."""
    from rooflens.data.prompts import corpus_ids
    from rooflens.data.quality import agreement

    prompt = torch.tensor([corpus_ids(smollm2.tokenizer, "heldout")[:96]])
    expected = _generate(build_engine(EngineSpec(name="hf"), smollm2), prompt, 48)
    engine = build_engine(EngineSpec(name="early_exit", options={"draft": "lookup", "audit": False}), smollm2)
    engine.prepare()
    assert engine.calibration is not None and engine.threshold == engine.calibration.threshold
    assert agreement(_generate(engine, prompt, 48), expected).fraction >= 0.9
