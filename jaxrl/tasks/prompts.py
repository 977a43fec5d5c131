"""Prompt sources: what the training job reads each step, and how it is checked.

    source = make_source(task_cfg, data_cfg, tokenizer, seed=..., max_new_tokens=..., ...)
    source.sft_batch(step, n)  -> (prompts_PL, prompt_lengths_P, solutions_PN, solution_lengths_P)
    source.rl_batch(step, n)   -> (prompts_PL, prompt_lengths_P, reward_inputs_P, prompt_ids_P)
    source.held_out            -> (prompts_PL, prompt_lengths_P, reward_inputs_P) or None
    source.held_out_questions  -> the held-out problems as plain text (a judge's prompt)

A source is checked one of two ways (`jaxrl.rl.rewards.for_source` builds the reward):
`source.task` set: an embedded task whose JAX checker runs inside the jitted step on the
`targets_PT` array; else `source.check(text, answer)` runs on the host per completion.

- `EmbeddedPrompts`: an embedded task on the character tokenizer. The SFT problems of step
  `s` come from `default_rng([seed, s])` (tasks/batches.py); RL prompts from a fixed pool
  visited in epochs (`task.train_pool`), or fresh problems every step.
- `JsonlPrompts`: user math problems from JSONL, prepared once as a TFDS dataset, on the
  checkpoint's tokenizer, scored on the host against each row's final answer.

Data position == step in both, so a resumed run reads what the uninterrupted one did.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from jaxrl.config_utils import at_least, one_of, positive
from jaxrl.models.tokenizer import Tokenizer
from jaxrl.tasks import batches, math_reward
from jaxrl.tasks.base import Task
from jaxrl.tasks.registry import TASKS, get_task

SOURCES = ("embedded", "jsonl")
ON_ERROR = ("skip", "raise")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """`config.task`: the embedded task (data.source='embedded')."""

    name: str
    difficulty: int
    max_steps: int  # 0 = the level's default cap on solution steps
    train_pool: int  # distinct RL prompts, visited in epochs; 0 = fresh problems every step

    def __post_init__(self):
        one_of("config.task.name", self.name, sorted(TASKS))
        at_least("config.task.train_pool", self.train_pool, 0)
        self.make()  # checks difficulty and max_steps, naming them

    def make(self) -> Task:
        try:
            return get_task(self.name, self.difficulty, self.max_steps or None)
        except ValueError as e:
            raise ValueError(f"config.task: {e}") from None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`config.data`: where prompts come from (configs/grpo.py explains each field)."""

    source: str
    manual_dir: str
    data_dir: str
    name: str
    on_error: str
    prompt_template: str
    max_prompt_len: int
    reward_timeout_s: float

    def __post_init__(self):
        one_of("config.data.source", self.source, SOURCES)
        if self.source != "jsonl":
            return
        from etils import epath

        if not self.manual_dir or not (epath.Path(self.manual_dir) / "train.jsonl").exists():
            raise ValueError(f"config.data.manual_dir={self.manual_dir!r} has no train.jsonl")
        one_of("config.data.on_error", self.on_error, ON_ERROR)
        try:
            rendered = self.prompt_template.format(prompt="\0")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"config.data.prompt_template={self.prompt_template!r} is not a "
                             f"str.format template with only {{prompt}} ({e!r}); write a "
                             "literal brace as {{ or }}") from None
        if "\0" not in rendered:
            raise ValueError(f"config.data.prompt_template={self.prompt_template!r} has no "
                             "{prompt}")
        at_least("config.data.max_prompt_len", self.max_prompt_len, 1)
        positive("config.data.reward_timeout_s", self.reward_timeout_s)


class EmbeddedPrompts:
    """An embedded task on the character tokenizer, with reference solutions for SFT."""

    check = None  # the task's JAX checker scores rollouts inside the step

    def __init__(self, task_cfg: TaskConfig, tokenizer: Tokenizer, *, seed: int,
                 max_new_tokens: int, num_held_out: int):
        self.task = task_cfg.make()
        self.tokenizer, self.seed = tokenizer, seed
        self.prompt_len, self.solution_len = batches.budgets(self.task)
        self.max_new_tokens = max_new_tokens or self.solution_len
        self.held_out_problems = batches.held_out_problems(self.task, seed, num_held_out)
        b = batches.encode(self.held_out_problems, self.prompt_len, self.solution_len)
        self.held_out = (b.prompts_PL, b.prompt_lengths_P, b.targets_PT)
        self.held_out_questions = [prob.prompt for prob in self.held_out_problems]
        pool = task_cfg.train_pool
        self.pool = batches.train_pool(self.task, seed, pool) if pool else None
        self.num_prompts = pool or None  # distinct RL prompts (None: a fresh stream)
        self.info = {"task": self.task.name, "rl_prompt_pool": pool or "fresh every step"}

    def sft_batch(self, step: int, n: int) -> tuple:
        problems = batches.train_problems(self.task, self.seed, step, n)
        b = batches.encode(problems, self.prompt_len,
                           batches.bucket_len(problems, self.solution_len))
        return b.prompts_PL, b.prompt_lengths_P, b.solutions_PN, b.solution_lengths_P

    def rl_batch(self, step: int, n: int) -> tuple:
        """(prompts, lengths, targets, prompt ids): from the pool by epochs (ids are pool
        indices), or fresh problems (ids unique to the step, so never seen again)."""
        if self.pool is None:
            problems = batches.train_problems(self.task, self.seed, step, n)
            ids_P = step * n + np.arange(n)
        else:
            ids_P = batches.epoch_indices(self.seed, step, n, len(self.pool))
            problems = [self.pool[i] for i in ids_P]
        b = batches.encode(problems, self.prompt_len, self.solution_len)
        return b.prompts_PL, b.prompt_lengths_P, b.targets_PT, ids_P.astype(np.int32)


class JsonlPrompts:
    """User math problems (GSM8K, MATH or DeepScaleR rows; tasks/tfds_builders.py).

    Step `s` reads the kept train rows at positions `s * P .. s * P + P - 1` of the endless
    sequence that visits every kept row once per epoch, in the order of
    `default_rng([seed, epoch]).permutation`. Rendered prompts over `data.max_prompt_len`
    tokens are skipped (counted); prompts are right-padded to the longest one kept, so every
    step has the same shapes. Held out: the first `num_held_out` rows of `test.jsonl` that fit.
    """

    task = None  # scored on the host by `check`

    def __init__(self, data_cfg: DataConfig, tokenizer: Tokenizer, *, seed: int,
                 max_new_tokens: int, num_held_out: int, workdir: str):
        from jaxrl.tasks import tfds_builders as tb  # TFDS only where JSONL is read

        d = data_cfg
        self.tokenizer, self.template, self.seed = tokenizer, d.prompt_template, seed
        self.max_new_tokens = max_new_tokens
        self.reward_timeout_s = d.reward_timeout_s
        # HF math-verify, as TRL and open-r1 score math rewards, in worker processes (its
        # timeouts need a main thread; jaxrl/tasks/math_reward.py).
        self.check = math_reward.Scorer()
        data_dir = d.data_dir or os.path.join(workdir, "data")
        builder = tb.prepare_jsonl(data_dir, d.manual_dir, d.name, d.on_error)
        name = builder.dataset_name  # keyed on the files' content
        train = tb.load_source(name, data_dir, "train")
        # Tokenized once: the length filter needs every prompt, and steps reuse them.
        self.train_prompts = [self._encode(train[i]["prompt"]) for i in range(len(train))]
        self.train_answers = [train[i]["answer"] for i in range(len(train))]
        lengths = np.asarray([len(p) for p in self.train_prompts], np.int64)
        self.rows = np.flatnonzero(lengths <= d.max_prompt_len)  # the kept train indices
        too_long = len(lengths) - len(self.rows)
        if not len(self.rows):
            raise ValueError(f"no train prompt of {name} fits config.data.max_prompt_len="
                             f"{d.max_prompt_len} tokens")
        self.prompt_len = int(lengths[self.rows].max())
        self.num_prompts = len(self.train_prompts)  # prompt ids are indices into the split

        held_prompts, held_answers, self.held_out_questions = [], [], []
        if "test" in builder.info.splits:
            test = tb.load_source(name, data_dir, "test")
            for i in range(len(test)):
                if len(held_prompts) == num_held_out:
                    break
                ids = self._encode(test[i]["prompt"])
                if len(ids) > d.max_prompt_len:
                    too_long += 1
                else:
                    held_prompts.append(ids)
                    held_answers.append(test[i]["answer"])
                    self.held_out_questions.append(test[i]["prompt"])
        else:
            logging.warning("%s has no test split: no held-out accuracy", name)
        self.held_out = None
        if held_prompts:
            prompts_PL, lengths_P = batches.pad_rows(held_prompts, max(map(len, held_prompts)),
                                                     tokenizer.pad_id)
            self.held_out = (prompts_PL, lengths_P, held_answers)
        if too_long:
            logging.warning("%s: skipped %d prompts longer than config.data.max_prompt_len=%d "
                            "tokens", name, too_long, d.max_prompt_len)
        self.info = {"dataset": name, "data_dir": data_dir, "train_rows": len(self.rows),
                     "held_out_rows": len(held_answers), "prompt_len": self.prompt_len,
                     "too_long_rows": too_long, "malformed_rows": len(builder.malformed)}

    @staticmethod
    def has_answer(text: str) -> bool:
        """The format reward's test: the completion states a final answer."""
        return math_reward.has_boxed_answer(text)

    def _encode(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(self.template.format(prompt=prompt))

    def row_indices(self, step: int, n: int) -> np.ndarray:
        """The train rows (indices into the split) of step `step`: see the class doc."""
        return self.rows[batches.epoch_indices(self.seed, step, n, len(self.rows))]

    def sft_batch(self, step: int, n: int) -> tuple:
        raise ValueError("JSONL math rows have no reference completions: set config.sft.steps=0")

    def rl_batch(self, step: int, n: int) -> tuple:
        rows = self.row_indices(step, n)
        # Every step pads to the same length: one compile.
        prompts_PL, lengths_P = batches.pad_rows([self.train_prompts[i] for i in rows],
                                                 self.prompt_len, self.tokenizer.pad_id)
        return prompts_PL, lengths_P, [self.train_answers[i] for i in rows], rows.astype(np.int32)


def make_source(task_cfg: TaskConfig, data_cfg: DataConfig, tokenizer: Tokenizer, *,
                seed: int, max_new_tokens: int, num_held_out: int, workdir: str = ""):
    """The configured prompt source; a jsonl source prepares its dataset (once) under
    `data.data_dir`, or `workdir/data` when that is ''."""
    kw = dict(seed=seed, max_new_tokens=max_new_tokens, num_held_out=num_held_out)
    if data_cfg.source == "embedded":
        return EmbeddedPrompts(task_cfg, tokenizer, **kw)
    if not (data_cfg.data_dir or workdir):
        raise ValueError("the jsonl source needs config.data.data_dir or a workdir")
    return JsonlPrompts(data_cfg, tokenizer, workdir=workdir, **kw)
