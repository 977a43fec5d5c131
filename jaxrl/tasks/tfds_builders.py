"""The TFDS builder for user JSONL of math problems (the embedded tasks are generated in
memory, tasks/batches.py: their data position is the step, so they need no dataset).

It writes array_record files, read back with `tfds.data_source`, so it needs no
TensorFlow; it needs `tensorflow-datasets` and `array-record`. Nothing in jaxrl imports
this module on its own: import it where JSONL is read, so that runs on generated prompts,
and the GPU benchmarks, need no TFDS.

    builder = tb.prepare_jsonl("/data/tfds", manual_dir="/data/gsm8k", name="gsm8k")
    builder.dataset_name  # 'jsonl_math/gsm8k-<hash of the files>': new files, new dataset
    src = tb.load_source(builder.dataset_name, "/data/tfds", "test")
    src[0]  # {'prompt': 'Janet’s ducks lay ...', 'answer': '18'}

Records keep their order: JSONL rows keep the order of the file (minus skipped rows).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import operator
from typing import Any, Iterator

import tensorflow_datasets as tfds
from absl import logging

from jaxrl.tasks import math_checker

FILE_FORMAT = "array_record"  # random access, and written without TensorFlow
JSONL_SPLITS = ("train", "test")
ON_ERROR = ("skip", "raise")
PROMPT_KEYS = ("problem", "question")  # the first one present is the prompt


# ---- User JSONL of math problems ----

@dataclasses.dataclass(eq=False)
class JsonlMathConfig(tfds.core.BuilderConfig):
    """A JSONL dataset; `on_error` says what a malformed row does: 'skip' (log it with file
    and line, count it, go on) or 'raise' (stop at the first one). Make these with
    `jsonl_config`, whose names carry a hash of the files, so other files prepare anew."""

    on_error: str = "skip"

    def __post_init__(self):
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")


SOURCE_HASH_CHARS = 12  # of the sha256: 48 bits, no collision between one user's files


def source_sha256(manual_dir) -> str:
    """sha256 over the manual_dir's train.jsonl and test.jsonl: each file's name and bytes,
    or that it is absent, so the digest changes with any file's content."""
    digest = hashlib.sha256()
    for split in JSONL_SPLITS:
        path = tfds.core.Path(manual_dir) / f"{split}.jsonl"
        digest.update(f"{path.name}\0".encode())
        if not path.exists():
            digest.update(b"absent\0")
            continue
        data = path.read_bytes()
        digest.update(f"{len(data)}\0".encode() + data)
    return digest.hexdigest()


def jsonl_config(manual_dir, name: str = "default", on_error: str = "skip") -> JsonlMathConfig:
    """The config `{name}-{first SOURCE_HASH_CHARS of source_sha256(manual_dir)}`: the same
    files under any path share a prepared dataset, and changed files get a new one."""
    sha = source_sha256(manual_dir)
    return JsonlMathConfig(
        name=f"{name}-{sha[:SOURCE_HASH_CHARS]}", on_error=on_error,
        description=f"{name}: train.jsonl / test.jsonl of {manual_dir}, sha256 {sha}")


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

    @property
    def dataset_name(self) -> str:
        """What to load it by: `load_source(builder.dataset_name, data_dir, split)`."""
        return f"{self.name}/{self.builder_config.name}"

    def _split_generators(self, dl_manager):
        manual_dir = dl_manager.manual_dir
        files = {split: manual_dir / f"{split}.jsonl" for split in JSONL_SPLITS}
        present = {split: path for split, path in files.items() if path.exists()}
        if not present:
            raise ValueError(f"no {' or '.join(p.name for p in files.values())} in the "
                             f"manual_dir {manual_dir}")
        # Read whole before TFDS writes anything: it cannot write an empty split, and its
        # error for one names neither the file nor why it is empty.
        rows = {}
        for split, path in present.items():
            n_malformed = len(self.malformed)
            kept = list(read_jsonl(path, self.builder_config.on_error, self.malformed))
            if kept:
                rows[split] = kept
                continue
            read = len(self.malformed) - n_malformed  # every non-blank row was rejected
            empty = (f"{path} has no usable row: {read} non-blank rows read, "
                     f"{read} rejected as malformed")
            if split == "train" or len(present) == 1:
                raise ValueError(empty)
            logging.warning("%s; the dataset has no %s split", empty, split)
        return {split: self._generate_examples(kept) for split, kept in rows.items()}

    def _generate_examples(self, rows):
        for line_no, prompt, answer in rows:
            yield line_no, {"prompt": prompt, "answer": answer}


# ---- Preparing and reading ----

def prepare_jsonl(data_dir, manual_dir, name: str = "default",
                  on_error: str = "skip") -> JsonlMath:
    """Writes (once per content) the dataset `jsonl_math/<jsonl_config(manual_dir, name)
    .name>` under data_dir from the manual_dir's train.jsonl / test.jsonl; load it by the
    result's `.dataset_name`. `.malformed` on the result lists skipped rows (empty when
    the dataset was already prepared). A train.jsonl with no usable row raises ValueError
    naming the file; so does a test.jsonl with none when there is no train.jsonl, and with
    one it is left out with a warning."""
    config = jsonl_config(manual_dir, name, on_error)
    builder = JsonlMath(config=config, data_dir=data_dir)
    logging.info("JSONL dataset %s under %s is %s", builder.dataset_name, data_dir,
                 config.description)
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
    prepared dataset `name` (`jsonl_math/gsm8k-<hash>`) under
    data_dir, read without TensorFlow. This is `tfds.data_source(..., download=False)`
    with errors that say what to do."""
    not_prepared = (f"{name!r} is not prepared under {data_dir}; write it first with "
                    f"prepare_jsonl")
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except ValueError as e:  # an unknown name or config (DatasetNotFoundError is one)
        raise FileNotFoundError(f"{not_prepared} ({str(e)[:300]})") from e
    if not builder.is_prepared():
        raise FileNotFoundError(not_prepared)
    return Source(builder.as_data_source(split=split))
