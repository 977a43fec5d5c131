"""TFDS builders for training data: the embedded tasks, and user JSONL of math problems.

Both write array_record files and are read back with `tfds.data_source`, so neither
needs TensorFlow; they need `tensorflow-datasets` and `array-record` (the "test" extra).
Nothing in jaxrl imports this module on its own: import it where data is read, so
that runs on generated prompts, and the GPU benchmarks, need no TFDS.

    from jaxrl.tasks import tfds_builders as tb
    tb.prepare_embedded("/data/tfds", "countdown", 2)
    src = tb.load_source("embedded_tasks/countdown-d2", "/data/tfds", "train")
    src[0]  # {'prompt': '24:3,4,6,8\\n', 'solution': ..., 'answer': '24', 'target': array}

    tb.prepare_jsonl("/data/tfds", manual_dir="/data/gsm8k", name="gsm8k")
    src = tb.load_source("jsonl_math/gsm8k", "/data/tfds", "test")
    src[0]  # {'prompt': 'Janet’s ducks lay ...', 'answer': '18'}

Records keep their order: example i of an embedded split is the i-th generated
problem, and JSONL rows keep the order of the file (minus skipped rows).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import operator
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from jaxrl.tasks import math_checker
from jaxrl.tasks.base import DEFAULT_DIFFICULTY
from jaxrl.tasks.registry import TASKS, get_task

FILE_FORMAT = "array_record"  # random access, and written without TensorFlow
EMBEDDED_SPLITS = ("train", "test")  # the index of each seeds its generator
DEFAULT_TRAIN_SIZE = 100_000
DEFAULT_TEST_SIZE = 1_000
JSONL_SPLITS = ("train", "test")
ON_ERROR = ("skip", "raise")
PROMPT_KEYS = ("problem", "question")  # the first one present is the prompt


# ---- The embedded tasks ----

@dataclasses.dataclass(eq=False)
class EmbeddedTasksConfig(tfds.core.BuilderConfig):
    """One task at one difficulty, with split sizes and a seed. Make these with
    `embedded_config`, whose names keep different settings in different directories."""

    task: str = "arithmetic"
    difficulty: int = DEFAULT_DIFFICULTY
    max_steps: int | None = None
    train_size: int = DEFAULT_TRAIN_SIZE
    test_size: int = DEFAULT_TEST_SIZE
    seed: int = 0


def embedded_config(task: str, difficulty: int = DEFAULT_DIFFICULTY, *,
                    max_steps: int | None = None, train_size: int = DEFAULT_TRAIN_SIZE,
                    test_size: int = DEFAULT_TEST_SIZE, seed: int = 0) -> EmbeddedTasksConfig:
    """The config named `{task}-d{difficulty}`, followed by every setting that is not the
    default (`-steps12-train500-test50-seed3`), so no two settings share a name."""
    get_task(task, difficulty, max_steps)  # validates the task, difficulty and max_steps
    for what, size in (("train_size", train_size), ("test_size", test_size)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{what} must be an int >= 0, got {size!r}")
    if train_size == test_size == 0:
        raise ValueError("train_size and test_size are both 0: nothing to write")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    name = f"{task}-d{difficulty}"
    if max_steps is not None:
        name += f"-steps{max_steps}"
    if train_size != DEFAULT_TRAIN_SIZE:
        name += f"-train{train_size}"
    if test_size != DEFAULT_TEST_SIZE:
        name += f"-test{test_size}"
    if seed != 0:
        name += f"-seed{seed}"
    return EmbeddedTasksConfig(
        name=name, task=task, difficulty=difficulty, max_steps=max_steps,
        train_size=train_size, test_size=test_size, seed=seed,
        description=f"{task} at difficulty {difficulty}: {train_size} train and "
                    f"{test_size} test problems from seed {seed}")


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator of a split: `default_rng([seed, index of split in EMBEDDED_SPLITS])`,
    so train and test are independent streams (on small levels they share problems)."""
    return np.random.default_rng([seed, EMBEDDED_SPLITS.index(split)])


class EmbeddedTasks(tfds.core.GeneratorBasedBuilder):
    """Problems from jaxrl's embedded generators (see jaxrl/tasks), one config per task
    and difficulty. Example i of a split is the i-th `task.sample(split_rng(seed, split))`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    BUILDER_CONFIGS = [embedded_config(name, d)
                       for name in sorted(TASKS) for d in range(len(TASKS[name].LEVELS))]

    def __init__(self, *, file_format: str = FILE_FORMAT, **kwargs: Any):
        super().__init__(file_format=file_format, **kwargs)

    @property
    def task(self):
        c = self.builder_config
        return get_task(c.task, c.difficulty, c.max_steps)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.builder_config.description,
            features=tfds.features.FeaturesDict({
                "prompt": tfds.features.Text(),
                "solution": tfds.features.Text(),
                "answer": tfds.features.Text(),
                # task.target, TARGET_PAD-padded: what the JAX checker reads
                "target": tfds.features.Tensor(shape=(self.task.target_len,), dtype=np.int32),
            }),
            disable_shuffling=True,  # example i is the i-th problem generated
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        sizes = {"train": c.train_size, "test": c.test_size}
        # TFDS cannot write an empty split, so a size of 0 leaves the split out.
        return {split: self._generate_examples(split, sizes[split])
                for split in EMBEDDED_SPLITS if sizes[split]}

    def _generate_examples(self, split: str, size: int):
        task, rng = self.task, split_rng(self.builder_config.seed, split)
        for i in range(size):
            p = task.sample(rng)
            yield i, {"prompt": p.prompt, "solution": p.solution, "answer": p.answer,
                      "target": np.asarray(p.target, np.int32)}


# ---- User JSONL of math problems ----

@dataclasses.dataclass(eq=False)
class JsonlMathConfig(tfds.core.BuilderConfig):
    """A named JSONL dataset; `on_error` says what a malformed row does: 'skip' (log it
    with file and line, count it, go on) or 'raise' (stop at the first one)."""

    on_error: str = "skip"

    def __post_init__(self):
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")


class MalformedRowError(ValueError):
    """A JSONL row that is not a usable problem; the message starts with `path:line:`."""

    def __init__(self, path: str, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = path, line, reason


def parse_math_row(row: Any) -> tuple[str, str]:
    """(prompt, final answer) of one decoded JSONL row, or ValueError saying why not.

    The prompt is `problem` or `question`. The final answer is the first non-empty of
    - `answer`: after its last `####` if it has one (GSM8K: a worked solution), else its
      last `\\boxed{}` if it has one, else all of it (DeepScaleR; a JSON number is
      taken as its decimal text);
    - the last `\\boxed{}` of `solution` (MATH).
    """
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
    key = next((k for k in PROMPT_KEYS if k in row), None)
    if key is None:
        raise ValueError(f"no prompt field: expected one of {list(PROMPT_KEYS)}, "
                         f"got keys {sorted(row)}")
    prompt = row[key]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{key!r} must be a non-empty string, got {prompt!r:.80}")
    if "answer" not in row and "solution" not in row:
        raise ValueError(f"no answer field: expected 'answer' or 'solution', "
                         f"got keys {sorted(row)}")
    final = None
    if "answer" in row:
        answer = row["answer"]
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise ValueError(f"'answer' must be a string or a number, got {answer!r:.80}")
        if "####" in answer:
            final = math_checker.after_hashes(answer)
        elif "\\boxed" in answer or "\\fbox" in answer:
            final = math_checker.last_boxed(answer)
        else:
            final = answer.strip()
    if not final and "solution" in row:
        solution = row["solution"]
        if not isinstance(solution, str):
            raise ValueError(f"'solution' must be a string, got {solution!r:.80}")
        final = math_checker.last_boxed(solution)
    if not final:
        fields = {k: row[k] for k in ("answer", "solution") if k in row}
        raise ValueError(f"no final answer in {fields!r:.120}")
    return prompt, final


def read_jsonl(path, on_error: str = "skip",
               malformed: list[MalformedRowError] | None = None) -> Iterator[tuple[int, str, str]]:
    """(line number, prompt, answer) for each good row of a JSONL file; blank lines are
    ignored. A malformed row raises MalformedRowError (on_error='raise'), or is logged
    and appended to `malformed` (on_error='skip')."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    path_str = str(path)
    n_good = n_bad = 0
    with tfds.core.Path(path).open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
                if not text.strip():
                    continue
                prompt, answer = parse_math_row(json.loads(text))
            except (ValueError, RecursionError) as e:  # JSON and UTF-8 errors are ValueErrors
                reason = (f"bad JSON: {e}" if isinstance(e, (json.JSONDecodeError, RecursionError))
                          else f"not UTF-8: {e}" if isinstance(e, UnicodeDecodeError) else str(e))
                error = MalformedRowError(path_str, line_no, reason)
                if on_error == "raise":
                    raise error from e
                logging.warning("Skipping malformed row %s", error)
                if malformed is not None:
                    malformed.append(error)
                n_bad += 1
                continue
            n_good += 1
            yield line_no, prompt, answer
    if n_bad:
        logging.warning("%s: kept %d rows, skipped %d malformed", path_str, n_good, n_bad)


class JsonlMath(tfds.core.GeneratorBasedBuilder):
    """Math problems with final answers, from `train.jsonl` and/or `test.jsonl` in the
    manual_dir (see `parse_math_row` for the fields read). After `download_and_prepare`,
    `self.malformed` lists the rows skipped (on_error='skip')."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    BUILDER_CONFIGS = []  # every dataset is the user's: see prepare_jsonl
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put train.jsonl and/or test.jsonl in the manual_dir: one JSON object per line, "
        "with 'problem' or 'question', and 'answer' (GSM8K's '... #### 18', or a final "
        "answer as in DeepScaleR) or 'solution' with a \\boxed{} answer (MATH).")

    def __init__(self, *, file_format: str = FILE_FORMAT, **kwargs: Any):
        super().__init__(file_format=file_format, **kwargs)
        self.malformed: list[MalformedRowError] = []

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Math problems and their final answers, from user JSONL.",
            features=tfds.features.FeaturesDict({
                "prompt": tfds.features.Text(),
                "answer": tfds.features.Text(),  # the final answer, for math_reward.verdict
            }),
            disable_shuffling=True,  # rows keep the file's order
        )

    def _split_generators(self, dl_manager):
        manual_dir = dl_manager.manual_dir
        files = {split: manual_dir / f"{split}.jsonl" for split in JSONL_SPLITS}
        present = {split: path for split, path in files.items() if path.exists()}
        if not present:
            raise ValueError(f"no {' or '.join(p.name for p in files.values())} in the "
                             f"manual_dir {manual_dir}")
        return {split: self._generate_examples(path) for split, path in present.items()}

    def _generate_examples(self, path):
        for line_no, prompt, answer in read_jsonl(path, self.builder_config.on_error,
                                                  self.malformed):
            yield line_no, {"prompt": prompt, "answer": answer}


# ---- Preparing and reading ----

def prepare_embedded(data_dir, task: str, difficulty: int = DEFAULT_DIFFICULTY,
                     **settings: Any) -> EmbeddedTasks:
    """Writes (once) the embedded dataset for `embedded_config(task, difficulty,
    **settings)` under data_dir; load it as `embedded_tasks/<builder_config.name>`."""
    config = embedded_config(task, difficulty, **settings)
    # TFDS refuses a config object that shares its name with one of BUILDER_CONFIGS.
    predefined = config.name in EmbeddedTasks.builder_configs
    builder = EmbeddedTasks(config=config.name if predefined else config, data_dir=data_dir)
    builder.download_and_prepare()
    return builder


def prepare_jsonl(data_dir, manual_dir, name: str = "default",
                  on_error: str = "skip") -> JsonlMath:
    """Writes (once) the JSONL dataset `jsonl_math/<name>` under data_dir from the
    manual_dir's train.jsonl / test.jsonl; `.malformed` on the result lists skipped rows
    (empty when the dataset was already prepared)."""
    builder = JsonlMath(config=JsonlMathConfig(name=name, on_error=on_error),
                        data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


class Source(collections.abc.Sequence):
    """Random access to a prepared split: len(), and source[i] as a dict of str (text
    features) and numpy arrays (tensors)."""

    def __init__(self, data_source):
        self._source = data_source
        features = data_source.dataset_info.features
        self._text_keys = frozenset(k for k, f in features.items()
                                    if isinstance(f, tfds.features.Text))

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = operator.index(index)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {index} is out of range for a split of {n} examples")
        record = self._source[i % n]
        return {k: v.decode("utf-8") if k in self._text_keys else v for k, v in record.items()}

    def __repr__(self) -> str:
        return f"Source({self._source!r}, len={len(self)})"


def load_source(name: str, data_dir, split: str = "train") -> Source:
    """The split `split` (`train`, `test`, or a TFDS slice like `train[:100]`) of the
    prepared dataset `name` (`embedded_tasks/countdown-d2`, `jsonl_math/gsm8k`) under
    data_dir, read without TensorFlow. This is `tfds.data_source(..., download=False)`
    with errors that say what to do."""
    not_prepared = (f"{name!r} is not prepared under {data_dir}; write it first with "
                    f"prepare_embedded or prepare_jsonl")
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except ValueError as e:  # an unknown name or config (DatasetNotFoundError is one)
        raise FileNotFoundError(f"{not_prepared} ({str(e)[:300]})") from e
    if not builder.is_prepared():
        raise FileNotFoundError(not_prepared)
    return Source(builder.as_data_source(split=split))
