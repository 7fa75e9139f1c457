"""Quality metrics: perplexity against an independent computation, agreement arithmetic, records."""

import math

import pytest
import torch

from rooflens.bench.runner import ExperimentRunner
from rooflens.bench.validate import validate_experiment
from rooflens.data.quality import agreement, heldout_ids, perplexity


def test_agreement_arithmetic():
    ref = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    a = agreement(ref.clone(), ref)
    assert a.fraction == 1.0 and a.first_divergence == 4
    other = torch.tensor([[1, 2, 9, 4], [5, 6, 7, 0]])
    a = agreement(other, ref)
    assert a.fraction == pytest.approx(6 / 8) and a.first_divergence == 2
    with pytest.raises(ValueError, match="shapes differ"):
        agreement(ref[:, :3], ref)


def test_perplexity_matches_a_direct_computation(tiny_llama):
    ids = torch.randint(0, tiny_llama.vocab_size, (50,), generator=torch.Generator().manual_seed(0))
    ppl, count = perplexity(tiny_llama.model, ids, window=20)
    # independent: token-by-token log-softmax over the same windows (20, 20, 10 tokens)
    nll, n = 0.0, 0
    with torch.no_grad():
        for start in (0, 20, 40):
            chunk = ids[start : start + 20]
            logp = torch.log_softmax(tiny_llama.model(chunk[None]).logits[0].double(), -1)
            for t in range(1, len(chunk)):
                nll -= logp[t - 1, chunk[t]].item()
                n += 1
    assert count == n == 47
    assert ppl == pytest.approx(math.exp(nll / n), rel=1e-5)
    # a random model is close to uniform over its vocabulary
    assert 0.3 * tiny_llama.vocab_size < ppl < 3 * tiny_llama.vocab_size


@pytest.mark.slow
def test_smollm2_perplexity_is_that_of_a_trained_model(smollm2):
    ppl, count = perplexity(smollm2.model, heldout_ids(smollm2.tokenizer))
    assert count > 1000
    assert 3 < ppl < 60  # a trained 135M model on plain English; random weights would give ~49152


@pytest.mark.slow
def test_random_weight_records_carry_no_quality_and_real_ones_do(tmp_path, tiny_llama):
    exp = validate_experiment(
        {
            "name": "q",
            "model": "shape:tiny-llama",
            "engines": [{"name": "hf"}],
            "workloads": [{"prompt_len": 8, "gen_len": 4}],
            "repetitions": {"warmup": 0, "min_reps": 1, "min_seconds": 0},
            "device": "cpu",
        }
    )
    rec = ExperimentRunner(exp, results_root=tmp_path).run().records[0]
    assert rec.status == "ok" and rec.quality is None


@pytest.mark.slow
def test_quality_against_the_baseline_in_a_real_run(tmp_path, smollm2, monkeypatch):
    monkeypatch.setattr("rooflens.bench.workbench.load_model", lambda *a, **k: smollm2)  # reuse the session's model
    exp = validate_experiment(
        {
            "name": "q",
            "model": "smollm2-135m",
            "engines": [{"name": "hf", "label": "static", "options": {"cache": "static"}}, {"name": "hf"}],
            "baseline": "hf",
            "workloads": [{"prompt_len": 16, "gen_len": 6, "prompt": "corpus"}],
            "repetitions": {"warmup": 0, "min_reps": 1, "min_seconds": 0},
            "device": "cpu",
        }
    )
    records = ExperimentRunner(exp, results_root=tmp_path).run().records
    assert [r.cell.engine_label for r in records] == ["hf", "static"]  # the baseline runs first
    for r in records:
        q = r.quality
        assert q.agreement.value == 1.0 and q.first_divergence.value == 6  # same greedy tokens
        assert q.rouge_l.value == 1.0 and q.rouge_l.source == "measured"
        assert 3 < q.perplexity.value < 60 and q.perplexity.source == "measured"
    assert records[0].quality.perplexity.value == pytest.approx(records[1].quality.perplexity.value)
