"""Draft models: loading the one an option names, sizing it beforehand, checking a target can exit early.

``draft`` is ``self:<k>`` (the target's first k layers, sharing its embeddings, final norm and LM head: no
weight is copied), ``shape:<name>`` (a shipped config with random weights) or a Hugging Face id / local path.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from rooflens.engines.decoding import decoder_layers, truncated_model
from rooflens.engines.options.speculative import SELF_RE, SHAPE_PREFIX


def build_draft(spec: str, target: torch.nn.Module, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """The draft model named by ``spec`` on the target's device and dtype, and a description of it."""
    from transformers import AutoModelForCausalLM

    device = next(target.parameters()).device
    dtype = next(target.parameters()).dtype
    m = SELF_RE.match(spec)
    if m:
        k = int(m.group(1))
        return truncated_model(target, k), f"target's first {k} layers (shared weights)"
    if spec.startswith(SHAPE_PREFIX):
        from rooflens.models.loader import shipped_config

        name = spec[len(SHAPE_PREFIX) :]
        config, _ = shipped_config(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.device(device):
                draft = AutoModelForCausalLM.from_config(config, dtype=dtype)
        note = f"shipped config {name}, random weights (seed {seed})"
    else:
        try:
            draft = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype).to(device)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load draft model {spec!r}: {err}") from err
        note = f"from_pretrained({spec!r})"
    draft.eval()
    check_same_vocab(target, draft, f"draft {spec!r}")
    return draft, note


def check_same_vocab(target: torch.nn.Module, draft: torch.nn.Module, what: str = "the draft") -> None:
    """ValueError unless ``draft`` has the target's vocabulary size (a draft must share its tokenizer)."""
    tv, dv = int(target.config.vocab_size), int(draft.config.vocab_size)
    if tv != dv:
        raise ValueError(
            f"{what} has vocab size {dv}, the target has {tv}: a draft must share the target's tokenizer/vocab"
        )


def separate_draft_config(spec: str) -> Any | None:
    """The config of the separate draft model ``spec`` (``shape:<name>`` or a HF id / path), read without its
    weights; None for ``self:<k>`` or a config that cannot be read (prepare() reports why)."""
    if SELF_RE.match(spec):
        return None
    from transformers import AutoConfig

    from rooflens.models.loader import shipped_config

    try:
        if spec.startswith(SHAPE_PREFIX):
            return shipped_config(spec[len(SHAPE_PREFIX) :])[0]
        return AutoConfig.from_pretrained(spec)
    except Exception:  # noqa: BLE001 - an unreadable draft is reported by prepare(), with its own reason
        return None


def draft_parameter_count(spec: str) -> int | None:
    """Parameters of the separate draft model ``spec`` from its config alone (meta device: nothing is
    allocated); None for ``self:<k>`` (shares the target's weights) or a draft whose config cannot be read."""
    config = separate_draft_config(spec)
    if config is None:
        return None
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    except Exception:  # noqa: BLE001 - as above
        return None


def trimmed_head_elements(spec: str, target_config: Any, draft_vocab: int) -> int | None:
    """Elements of the LM-head copy that ``draft_vocab`` makes (rows x the draft's hidden size); None when the
    draft's config cannot be read."""
    config = target_config if SELF_RE.match(spec) else separate_draft_config(spec)
    hidden = getattr(config, "hidden_size", None) if config is not None else None
    if hidden is None:
        return None
    return min(draft_vocab, int(target_config.vocab_size)) * int(hidden)


def check_early_exit(target: torch.nn.Module, k: int) -> None:
    """ValueError unless HF's ``assistant_early_exit=k`` can truncate ``target`` to its first ``k`` layers."""
    base, attr, layers = decoder_layers(target)
    if not 1 <= k < len(layers):
        raise ValueError(f"draft 'self:{k}': the target has {len(layers)} layers; k must be in 1..{len(layers) - 1}")
    src = inspect.getsource(type(base).forward)
    if f"self.{attr}[: self.config.num_hidden_layers]" not in src:
        raise ValueError(
            f"HF early exit truncates via config.num_hidden_layers, which {type(base).__name__}.forward ignores"
        )
