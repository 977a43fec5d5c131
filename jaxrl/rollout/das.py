"""DAS, the one face the training step calls: the rollout config, the history it keeps in
the train state, a speculative rollout from it, and the per-step speculation metrics.

    history = das.init_history(cfg, num_prompts, group, max_new_tokens)
    rollout, stats = das.rollout(model, params, prompts_BL, ..., history, prompt_ids_P, cfg=cfg, ...)
    rollout, stats = das.rollout_new_prompts(model, params, prompts_BL, ..., cfg=cfg, group=g, ...)
    history = das.record(history, prompt_ids_P, rollout.tokens_BN, rollout.lengths_B)
    metrics = das.metrics(stats, rollout.lengths_B)

The pieces: `drafter.py` (suffix match over the history), `policy.py` (length classes,
budgets, verification widths and their cost model), `speculative.py` (the decode loop).
Shape letters: docs/DESIGN.md#glossary.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxrl.config_utils import at_least, one_of, positive
from jaxrl.models.decoder import Decoder
from jaxrl.rollout import drafter, policy, speculative
from jaxrl.rollout.decode import Rollout
from jaxrl.rollout.sampling import SamplingParams
from kernels.dispatch import IMPLS

MAX_HISTORY_SLOTS = 4096  # prompts kept when config.rollout.history_slots = 0


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """`config.rollout` (configs/grpo.py explains each field)."""

    speculative: bool
    window: int
    history_slots: int
    widths: tuple[int, ...]
    max_match: int
    spec_factor: float
    min_token_prob: float
    max_candidates: int
    length_aware: bool
    class_budgets: tuple[int, ...]
    long_frac: float
    medium_frac: float
    compaction: bool
    min_bucket: int
    fit_cost_model: bool
    cost_base: float
    cost_per_token: float
    draft_cost: float
    draft_cost_per_row: float
    verify_impl: str
    attention_impl: str

    def __post_init__(self):
        p = "config.rollout"
        if (0 not in self.widths or min(self.widths) < 0
                or len(set(self.widths)) != len(self.widths)):
            raise ValueError(f"{p}.widths must be distinct ints >= 0 including 0 (a pass "
                             f"without drafts), got {self.widths}")
        for name in ("window", "max_match", "max_candidates", "min_bucket"):
            at_least(f"{p}.{name}", getattr(self, name), 1)
        at_least(f"{p}.history_slots", self.history_slots, 0)
        if not 0.0 <= self.min_token_prob <= 1.0:
            raise ValueError(f"{p}.min_token_prob must be in [0, 1], got {self.min_token_prob}")
        positive(f"{p}.spec_factor", self.spec_factor)
        if len(self.class_budgets) != 3 or min(self.class_budgets) < 0:
            raise ValueError(f"{p}.class_budgets must be 3 ints >= 0 (short, medium, long), "
                             f"got {self.class_budgets}")
        if not (0 <= self.long_frac and 0 <= self.medium_frac
                and self.long_frac + self.medium_frac <= 1):
            raise ValueError(f"{p}.long_frac + medium_frac must lie in [0, 1], got "
                             f"{self.long_frac} + {self.medium_frac}")
        at_least(f"{p}.cost_base", self.cost_base, 0)
        positive(f"{p}.cost_per_token", self.cost_per_token)
        at_least(f"{p}.draft_cost", self.draft_cost, 0)
        at_least(f"{p}.draft_cost_per_row", self.draft_cost_per_row, 0)
        one_of(f"{p}.verify_impl", self.verify_impl, IMPLS)
        one_of(f"{p}.attention_impl", self.attention_impl, IMPLS)

    @property
    def max_draft(self) -> int:
        return max(self.widths)

    def replace(self, **kw) -> "RolloutConfig":
        return dataclasses.replace(self, **kw)


def init_history(cfg: RolloutConfig, num_prompts: int | None, group: int,
                 max_new_tokens: int) -> drafter.History:
    """An empty history with a slot per distinct prompt (`num_prompts`; None = a fresh
    stream), at most `cfg.history_slots` or MAX_HISTORY_SLOTS of them."""
    slots = cfg.history_slots or min(num_prompts or MAX_HISTORY_SLOTS, MAX_HISTORY_SLOTS)
    return drafter.init_history(slots, cfg.window, group, max_new_tokens)


def rollout(model: Decoder, params, prompts_BL, prompt_lengths_B, uids_B, key,
            sampling: SamplingParams, history: drafter.History, prompt_ids_P, *,
            cfg: RolloutConfig, group: int, max_new_tokens: int,
            stop_tokens: tuple[int, ...], pad_id: int,
            layout=None) -> tuple[Rollout, speculative.SpecStats]:
    """The tokens plain decoding gives, drafted from each prompt's past rollouts."""
    past_PRN, past_lengths_PR = drafter.prompt_history(history, prompt_ids_P)
    class_P = policy.length_classes(past_lengths_PR, cfg.long_frac, cfg.medium_frac)
    return speculative.generate(model, params, prompts_BL, prompt_lengths_B, uids_B, key,
                                sampling, past_PRN, class_P, spec=cfg, group=group,
                                max_new_tokens=max_new_tokens, stop_tokens=stop_tokens,
                                pad_id=pad_id, layout=layout)


def rollout_new_prompts(model: Decoder, params, prompts_BL, prompt_lengths_B, uids_B, key,
                        sampling: SamplingParams, *, cfg: RolloutConfig, group: int,
                        max_new_tokens: int, stop_tokens: tuple[int, ...], pad_id: int,
                        layout=None) -> tuple[Rollout, speculative.SpecStats]:
    """The tokens plain decoding gives, for prompts never rolled out before (PairRL's judge
    prompts: new pairs every step): drafts come from each prompt itself and its group's
    live outputs only, the history one empty slot; every prompt is MEDIUM."""
    p = prompts_BL.shape[0] // group
    empty_PRN = jnp.full((p, 1, max_new_tokens), drafter.SEP, jnp.int32)
    return speculative.generate(model, params, prompts_BL, prompt_lengths_B, uids_B, key,
                                sampling, empty_PRN, jnp.full((p,), policy.MEDIUM, jnp.int32),
                                spec=cfg, group=group, max_new_tokens=max_new_tokens,
                                stop_tokens=stop_tokens, pad_id=pad_id, layout=layout)


def record(history: drafter.History, prompt_ids_P, tokens_BN, lengths_B) -> drafter.History:
    """This step's outputs join each prompt's window (`drafter.update_history`)."""
    return drafter.update_history(history, prompt_ids_P, tokens_BN, lengths_B)


def metrics(stats: speculative.SpecStats, lengths_B: jax.Array) -> dict:
    """Per-step speculation metrics: acceptance overall and by length class, the work done
    (`spec/plain_passes`: the decode steps plain decoding takes for the same rollout)."""
    ratio = lambda a, b: a / jnp.maximum(b, 1)  # noqa: E731
    m = {"spec/passes": stats.passes, "spec/plain_passes": jnp.max(lengths_B) - 1,
         "spec/drafted": stats.drafted,
         "spec/skipped_drafts": stats.skipped,
         "spec/accepted": stats.accepted,
         "spec/acceptance": ratio(stats.accepted, stats.drafted),
         # Accepted over the drafter's forecast (1 = its probabilities were right).
         "spec/calibration": stats.accepted / jnp.maximum(stats.forecast, 1e-6),
         # Tokens a row gains per verification: 1 (the bonus token) + accepted drafts.
         "spec/tokens_per_row_pass": 1.0 + ratio(stats.accepted, stats.row_passes),
         "spec/bucket_rows_mean": ratio(stats.bucket_N.sum(), stats.passes),
         "spec/active_rows_mean": ratio(jnp.maximum(stats.active_N, 0).sum(), stats.passes)}
    for c, name in enumerate(policy.CLASS_NAMES):
        m[f"spec/acceptance_{name}"] = ratio(stats.accepted_C[c], stats.drafted_C[c])
        m[f"spec/rows_{name}"] = stats.rows_C[c]
    return m
