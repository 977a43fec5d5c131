"""The JSONL math reward: HF math-verify, configured as TRL's and open-r1's `accuracy_reward`.

    verdict("... so the total is $\\boxed{\\frac{3}{4}}$.", "0.75")   -> True
    HostReward(Scorer(), ...)   # the same verdicts, from threads, in worker processes

The completion's answer is taken as TRL does: LaTeX only (`\\boxed{}` first, then `$...$`
and the other math delimiters), first match, no unanchored guess, units dropped. So a
completion that states its answer outside LaTeX (`#### 72`, `the answer is 72`) scores 0:
the prompt asks for `\\boxed{}`, and the published recipes reward only that.

The gold answer is a row's final answer (jaxrl/tasks/tfds_builders.py stores it), boxed
before parsing, as verl's math-verify reward does: a bare `(1,2)` or `\\frac{1}{2}\\sqrt{3}`
is then read whole. A gold answer that still holds its markup (`... #### 18`, a
`\\boxed{}` solution) is reduced to its final answer first.

Why a process pool: math-verify bounds its work with `signal.alarm`, which works only in a
process's main thread, and HostReward calls us from threads. With the alarm off (TRL's
choice in threads) one `\\boxed{10^{10^{10}}}` against gold `10` spins for minutes and
allocates gigabytes in the trainer. So the work runs in spawned worker processes, where it
is on the main thread and keeps math-verify's own timeouts; a worker that dies is replaced.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import logging
import multiprocessing
import os
import threading

from jaxrl.tasks.math_checker import after_hashes, last_boxed

PARSE_TIMEOUT_S = 5  # math-verify's defaults, per parse and per comparison
VERIFY_TIMEOUT_S = 5


def gold_final_answer(gold: str) -> str:
    """The final answer in a gold string that may still carry `####` or `\\boxed{}`."""
    if "####" in gold:
        return after_hashes(gold) or ""
    if "\\boxed" in gold or "\\fbox" in gold:
        return last_boxed(gold) or ""
    return gold.strip()


def verdict(completion: str, gold: str) -> bool:
    """Whether the completion's answer equals `gold`, by math-verify, in this thread.

    Uses `signal.alarm`: call it only on a main thread (`Scorer` runs it in a worker).
    """
    # Imported here: the trainer imports this module, and only the workers need sympy.
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    if not isinstance(completion, str) or not isinstance(gold, str):
        return False
    gold = gold_final_answer(gold)
    if not gold:
        return False
    gold_parsed = parse("\\boxed{" + gold + "}", [LatexExtractionConfig()],
                        parsing_timeout=PARSE_TIMEOUT_S)
    if not gold_parsed:
        return False
    answer_parsed = parse(
        completion,
        [LatexExtractionConfig(normalization_config=NormalizationConfig(units=True),
                               boxed_match_priority=0, try_extract_without_anchor=False)],
        extraction_mode="first_match", parsing_timeout=PARSE_TIMEOUT_S)
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=VERIFY_TIMEOUT_S))


def _worker_init():
    import math_verify  # noqa: F401  loaded while the pool warms, not on the first call

    # A timed-out parse logs a warning per call; the caller sees the verdict False.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _ready(_: int) -> bool:
    return True


class Scorer:
    """`scorer(completion, gold_answer) -> bool`: `verdict` in worker processes.

    Thread-safe. The workers start (and load math-verify) in the constructor, so a first
    batch does not spend its reward timeout on process start-up. A worker that dies
    (killed, out of memory) makes that call raise, and the pool is started again.
    """

    def __init__(self, workers: int | None = None):
        # One process per core: the work is CPU-bound, and calls from more threads queue.
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._pool = self._start()

    def _start(self) -> concurrent.futures.ProcessPoolExecutor:
        # spawn, not fork: the trainer is multithreaded (JAX), and a forked child could
        # inherit a held lock.
        pool = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init)
        list(pool.map(_ready, range(self.workers)))  # one task each starts every worker
        # Shut down before interpreter teardown, which the executor's own hook can outlive.
        atexit.register(pool.shutdown, cancel_futures=True)
        return pool

    def __call__(self, completion: str, gold_answer: str) -> bool:
        pool = self._pool
        try:
            return pool.submit(verdict, completion, gold_answer).result()
        except concurrent.futures.process.BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._start()
            raise


def has_boxed_answer(text: str) -> bool:
    """The format reward's test: the completion states a `\\boxed{}` answer."""
    return last_boxed(text) is not None
