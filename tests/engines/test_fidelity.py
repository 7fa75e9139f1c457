"""Fidelity: each technique engine says how a run departs from its paper's reference setup, option by option, and
the report calls such a run an adaptation."""

from __future__ import annotations

from rooflens.engines.early_exit.fidelity import fidelity as specee
from rooflens.engines.mixed_precision.fidelity import fidelity as pmpd
from rooflens.engines.options.early_exit import EarlyExitOptions
from rooflens.engines.options.mixed_precision import MixedPrecisionOptions
from rooflens.reports.story import story
from rooflens.results.stat import Fidelity


def _settings(f: Fidelity) -> set[str]:
    return {d.setting for d in f.deviations}


def test_early_exit_defaults_deviate_from_specee_where_the_review_found_it():
    f = specee(EarlyExitOptions())
    assert f.technique.startswith("SpecEE") and not f.reproduces
    assert _settings(f) == {"draft", "skipped_kv", "online schedule", "predictor_hidden", "predictor training data"}
    skipped = next(d for d in f.deviations if d.setting == "skipped_kv")
    assert "deferred" in skipped.here and "unwritten" in skipped.reference
    fill = next(d for d in specee(EarlyExitOptions(skipped_kv="fill")).deviations if d.setting == "skipped_kv")
    assert "CALM" in fill.here


def test_early_exit_set_up_as_specee_leaves_only_what_rooflens_cannot_do():
    opts = EarlyExitOptions(
        skipped_kv="unwritten", predictor_hidden=512, train_prompts=80, train_gen_len=256, draft="head", k=4
    )
    # rooflens's own head, and the online step takes every layer within the radius: both still said
    assert _settings(specee(opts)) == {"draft", "online schedule"}
    eagle = opts.model_copy(update={"draft": "eagle:/some/folder"})  # a pretrained EAGLE-1 head: the reference's
    assert _settings(specee(eagle)) == {"online schedule"}
    assert "threshold" in _settings(specee(opts, threshold=0.8))  # a threshold set by hand is said too
    assert "schedule" in _settings(specee(EarlyExitOptions(schedule="all")))
    assert any(d.setting == "k" and d.here == "6" for d in specee(EarlyExitOptions(k=6)).deviations)


def test_mixed_precision_says_its_quantizer_storage_and_precisions():
    f = pmpd(MixedPrecisionOptions())
    assert f.technique.startswith("PMPD")
    assert _settings(f) == {"quantizer", "storage", "precisions", "scheduler training data"}
    paper_like = MixedPrecisionOptions(ladder=[3, 2], prefill_bits=4, scheduler="static", switch_steps=[8])
    assert _settings(pmpd(paper_like)) == {"quantizer", "storage"}
    confidence = pmpd(MixedPrecisionOptions(scheduler="confidence"))
    assert "scheduler" in _settings(confidence)


def test_the_report_calls_a_deviating_run_an_adaptation():
    from factories import make_record

    base = make_record("hf", decode=10.0)
    ee = make_record("early_exit", decode=12.0)
    ee.fidelity = specee(EarlyExitOptions())
    lines = story([base, ee])
    said = [s for s in lines if "adaptation of SpecEE" in s]
    assert len(said) == 1 and "5 deviations" in said[0] and "skipped_kv" in said[0]
    assert not any("hf is an adaptation" in s for s in lines)


def test_a_runs_records_carry_the_engines_fidelity(tmp_path):
    from factories import tiny_experiment
    from rooflens.bench.runner import ExperimentRunner
    from rooflens.results.store import load_records

    mixed = {"name": "mixed_precision", "options": {"ladder": [8, 4], "scheduler": "static", "switch_steps": [2]}}
    ExperimentRunner(tiny_experiment([{"name": "hf"}, mixed], batch_sizes=(1,)), results_root=tmp_path).run()
    by_engine = {r.cell.engine: r for r in load_records(tmp_path)}
    assert by_engine["hf"].status == "ok" and by_engine["hf"].fidelity is None
    f = by_engine["mixed_precision"].fidelity
    assert f is not None and f.technique.startswith("PMPD")
    assert {d.setting for d in f.deviations} == {"quantizer", "storage", "precisions"}  # switch_steps given: no tuning
