"""Embedded tasks: generators, reference solutions, and the Python and JAX checkers.

The Python checker is the readable reference; the JAX checker must agree with it on every
completion (the contract in jaxrl/tasks/base.py), which the property test checks on a
mix of reference solutions and mutated ones, with EOS, length cuts and special ids.
"""
import functools
import re

import jax
import numpy as np
import pytest

from jaxrl.models.tokenizer import CharTokenizer
from jaxrl.tasks import DEFAULT_DIFFICULTY, TASKS, Problem, get_task
from jaxrl.tasks.base import TARGET_PAD, pad_target

TOK = CharTokenizer()
EOS, PAD, BOS = TOK.eos_ids[0], TOK.pad_id, TOK.bos_id
NAMES = sorted(TASKS)
DIFFICULTIES = (0, 1, 2, 3)
SLACK = 48  # room for mutations that lengthen a completion, and for EOS and junk


@functools.cache
def task_and_checker(name, difficulty=DEFAULT_DIFFICULTY):
    task = get_task(name, difficulty)
    return task, jax.jit(jax.vmap(task.jax_check))


def samples(task, n, seed=0):
    rng = np.random.default_rng(seed)
    return [task.sample(rng) for _ in range(n)]


def encode(completions, n_tokens, eos=True):
    """[B, n_tokens] ids (text, then EOS, then pad) and lengths that include the EOS."""
    ids = np.full((len(completions), n_tokens), PAD, np.int32)
    lengths = np.zeros(len(completions), np.int32)
    for i, text in enumerate(completions):
        row = TOK.encode(text) + ([EOS] if eos else [])
        ids[i, :len(row)] = row
        lengths[i] = len(row)
    return ids, lengths


def jax_results(name, problems, completions, difficulty=DEFAULT_DIFFICULTY):
    task, checker = task_and_checker(name, difficulty)
    ids, lengths = encode(completions, task.max_solution_len + SLACK)
    targets = np.array([p.target for p in problems], np.int32)
    return [bool(r) for r in checker(ids, lengths, targets)]


def both_checkers(name, problem, completion):
    task, _ = task_and_checker(name)
    return task.check(problem, completion), jax_results(name, [problem], [completion])[0]


# ---- Registry and generators ----

def test_registry_names_and_errors():
    assert set(NAMES) == {"arithmetic", "countdown", "sort"}
    with pytest.raises(ValueError, match=r"'nope'.*\['arithmetic', 'countdown', 'sort'\]"):
        get_task("nope")
    with pytest.raises(ValueError, match=r"one of \(0, 1, 2, 3\), got 4"):
        get_task("sort", 4)
    with pytest.raises(ValueError, match=r"one of \(0, 1, 2, 3\), got True"):
        get_task("sort", True)
    with pytest.raises(ValueError, match=r"max_steps must be an int >= 2.*got 1"):
        get_task("arithmetic", 1, max_steps=1)
    assert get_task("countdown", 2, max_steps=30).max_steps == 30


@pytest.mark.parametrize("name", NAMES)
def test_generators_are_seeded(name):
    task = get_task(name)
    assert samples(task, 30, seed=7) == samples(task, 30, seed=7)
    assert samples(task, 30, seed=7) != samples(task, 30, seed=8)


@pytest.mark.parametrize("name", NAMES)
def test_problems_encode_and_fit_the_static_sizes(name):
    for difficulty in DIFFICULTIES:
        task = get_task(name, difficulty)
        for p in samples(task, 200, seed=difficulty):
            assert TOK.decode(TOK.encode(p.prompt)) == p.prompt
            assert TOK.decode(TOK.encode(p.solution)) == p.solution
            assert p.solution.endswith("#" + p.answer) and p.solution.count("#") == 1
            assert p.prompt.endswith("\n") and len(p.prompt) <= task.max_prompt_len
            assert len(p.solution) <= task.max_solution_len
            assert len(p.target) == task.target_len
            if name == "countdown":
                assert p.target[0] == int(p.answer)
                numbers = [v for v in p.target[1:] if v != TARGET_PAD]
                assert p.prompt == f"{p.answer}:{','.join(map(str, numbers))}\n"
            else:
                assert p.target == pad_target(TOK.encode(p.answer), task.target_len)


@pytest.mark.parametrize("name", NAMES)
def test_lengths_are_long_tailed_and_bounded(name):
    task = get_task(name)
    lengths = np.array([len(p.solution) for p in samples(task, 2000)])
    median, p99 = np.median(lengths), np.percentile(lengths, 99)
    assert p99 >= 3 * median, (median, p99)
    assert lengths.max() <= task.max_solution_len
    steps = [task.num_steps(np.random.default_rng(s)) for s in range(300)]
    assert min(steps) >= task.level.min_steps and max(steps) <= task.max_steps


def test_max_steps_caps_lengths():
    for name in NAMES:
        task = get_task(name, 3, max_steps=5)
        assert max(len(p.solution) for p in samples(task, 300)) <= task.max_solution_len
        assert task.max_solution_len < get_task(name, 3).max_solution_len


def test_known_formats():
    arithmetic = get_task("arithmetic")
    p = Problem("12+7*3-5\n", "7*3=21\n12+21=33\n33-5=28\n#28", "28",
                pad_target(TOK.encode("28"), arithmetic.target_len))
    for line in p.solution.split("\n")[:-1]:  # every scratchpad line is true
        lhs, rhs = line.split("=")
        assert eval(lhs) == int(rhs)  # noqa: S307 (fixed test strings)
    assert both_checkers("arithmetic", p, p.solution) == (True, True)
    for p in samples(arithmetic, 300):  # the answer is the prompt's value, with precedence
        assert eval(p.prompt) == int(p.answer)  # noqa: S307 (generated digits and + - *)
    for p in samples(get_task("sort"), 300):
        values = sorted(int(v) for v in p.prompt.removeprefix("sort:").split(","))
        assert p.answer == ",".join(map(str, values))


# ---- Reference solutions pass, corruptions fail ----

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_reference_solutions_pass_both_checkers(name, difficulty):
    task = get_task(name, difficulty)
    problems = samples(task, 150, seed=difficulty)
    assert all(task.check(p, p.solution) for p in problems)
    assert all(jax_results(name, problems, [p.solution for p in problems], difficulty))


def _arithmetic_problem(answer):
    target_len = get_task("arithmetic").target_len
    return Problem("", "", answer, pad_target(TOK.encode(answer), target_len))


@pytest.mark.parametrize("completion,expected", [
    ("3-5=-2\n#-2", True),
    ("#-2", True),  # only the answer is checked
    ("#7\nthinking\n#-2", True),  # the last '#' counts
    ("#-2\nbut then\n", True),  # text after the answer line is ignored
    ("#-2\n#7", False),
    ("3-5=-2\n#2", False),  # sign dropped
    ("3-5=-2\n-2", False),  # no '#'
    ("#-02", False),  # leading zero
    ("#- 2", False),
    ("#-2 ", False),
    ("#--2", False),
    ("#", False),
    ("", False),
])
def test_arithmetic_answers(completion, expected):
    assert both_checkers("arithmetic", _arithmetic_problem("-2"), completion) == (expected,) * 2


def test_arithmetic_zero_answer():
    p = _arithmetic_problem("0")
    assert both_checkers("arithmetic", p, "#0") == (True, True)
    assert both_checkers("arithmetic", p, "#00") == (False, False)
    assert both_checkers("arithmetic", p, "#-0") == (False, False)


def _countdown_problem(target, numbers):
    return Problem(f"{target}:{','.join(map(str, numbers))}\n", "", str(target),
                   pad_target([target, *numbers], get_task("countdown").target_len))


@pytest.mark.parametrize("completion,expected", [
    ("8-4=4\n6*4=24\n#24", True),
    ("8*3=24\n#24", True),  # not every number has to be used
    ("3*8=24\n#24", True),
    ("6/3=2\n8+4=12\n12*2=24\n#24", True),  # exact division
    ("8-4=4\n4*6=24\n#24", True),  # the given 4 is used once, the result 4 once
    ("8*3=24\n#24\nanything after the answer line", True),
    ("8*3=24\n#25", False),  # wrong final answer
    ("8*3=24\n24", False),  # no '#'
    ("#24", False),  # no steps
    ("8-4=5\n6*4=24\n#24", False),  # wrong intermediate arithmetic
    ("4*4=16\n16+8=24\n#24", False),  # 4 used twice, given once
    ("6-4=2\n8+4=12\n12*2=24\n#24", False),  # 4 used twice, both times second
    ("3+4=7\n7+7=14\n14+8=22\n#24", False),  # a result used twice
    ("12*2=24\n#24", False),  # neither 12 nor 2 is available
    ("8-4=4\n6*4=24\n24/1=24\n#24", False),  # 1 is not available
    ("8*3=24\n6-4=2\n#24", False),  # the last step does not reach the target
    ("3-8=-5\n#24", False),  # below zero
    ("8/3=2\n#24", False),  # inexact division
    ("8 * 3 = 24\n#24", False),  # malformed: spaces
    ("8*3=24#24", False),  # malformed: no newline before the answer
    ("8x3=24\n#24", False),
    ("08*3=24\n#24", False),  # leading zero
    ("8*3=024\n#24", False),
    ("\n8*3=24\n#24", False),  # empty line
    ("8*3=24\n\n#24", False),
    ("8*3=24=24\n#24", False),
    ("8*3*1=24\n#24", False),
    ("8*=24\n#24", False),
    ("8*3=24\n#024", False),
    ("8*3=24\n#24 ", False),
])
def test_countdown_checkers(completion, expected):
    problem = _countdown_problem(24, [3, 4, 6, 8])
    assert both_checkers("countdown", problem, completion) == (expected,) * 2


def test_countdown_repeated_and_large_numbers():
    p = _countdown_problem(16, [4, 4, 2])
    assert both_checkers("countdown", p, "4*4=16\n#16") == (True, True)  # 4 is given twice
    assert both_checkers("countdown", p, "4*4=16\n16/2=8\n8+4=12\n#16") == (False, False)
    p = _countdown_problem(1, [999999, 999999])
    assert both_checkers("countdown", p, "999999/999999=1\n#1") == (True, True)
    assert both_checkers("countdown", p, "999999*999999=999998000001\n#1") == (False, False)
    p = _countdown_problem(999998, [999999, 1])
    assert both_checkers("countdown", p, "999999-1=999998\n#999998") == (True, True)
    assert both_checkers("countdown", p, "999999*1=999998\n#999998") == (False, False)
    p = _countdown_problem(999999, [999999, 1, 1])  # 7 digits are too many, even in between
    assert both_checkers("countdown", p, "999999+1=1000000\n1000000-1=999999\n#999999") == (
        False, False)
    p = _countdown_problem(0, [65536, 65536])  # the product wraps to 0 in int32
    assert both_checkers("countdown", p, "65536*65536=0\n#0") == (False, False)


@pytest.mark.parametrize("completion,expected", [
    ("5,1,3\n1,5,3\n1,3,5\n#1,3,5", True),
    ("#1,3,5", True),
    ("#1,3,5\n", True),
    ("#1,5,3", False),
    ("#1,3", False),
    ("#1,3,5,", False),
    ("#1, 3, 5", False),
    ("1,3,5", False),
])
def test_sort_answers(completion, expected):
    p = Problem("sort:5,1,3\n", "", "1,3,5", pad_target(TOK.encode("1,3,5"),
                                                        get_task("sort").target_len))
    assert both_checkers("sort", p, completion) == (expected,) * 2


@pytest.mark.parametrize("name", NAMES)
def test_jax_checker_respects_length_and_eos(name):
    task, checker = task_and_checker(name)
    problems = samples(task, 20, seed=3)
    n_tokens = task.max_solution_len + SLACK
    ids, lengths = encode([p.solution for p in problems], n_tokens, eos=False)
    targets = np.array([p.target for p in problems], np.int32)
    assert np.all(checker(ids, lengths, targets))  # EOS outside length, or none at all
    assert not np.any(checker(ids, lengths - 1, targets))  # the last answer digit cut off
    junk = TOK.encode("\n#999,1")  # after EOS it is not part of the completion
    with_junk = ids.copy()
    for i, n in enumerate(lengths):
        with_junk[i, n:n + 1 + len(junk)] = [EOS, *junk]
    assert np.all(checker(with_junk, lengths + 1 + len(junk), targets))
    assert not np.any(checker(ids, lengths * 0, targets))
    # Ids with no character are skipped: a pad, a bos or an id past the vocabulary.
    for special in (PAD, BOS, TOK.vocab_size + 5):
        spliced = np.insert(ids, 1, special, axis=1)[:, :n_tokens]
        assert np.all(checker(spliced, lengths + 1, targets))


# ---- Property test: the JAX checker equals the Python checker ----

_INSERTABLE = "0123456789+-*/=#\n,: x"


def _mutate(text, rng, prompt):
    """One random edit, most of them small: the kind a sampling model makes."""
    lines = text.split("\n")
    kind = int(rng.integers(10))
    pos = int(rng.integers(len(text) + 1))
    if kind == 0:  # change a digit
        digits = [i for i, ch in enumerate(text) if ch.isdigit()]
        if digits:
            i = int(rng.choice(digits))
            return text[:i] + str((int(text[i]) + int(rng.integers(1, 10))) % 10) + text[i + 1:]
    if kind == 1 and text:
        return text[:min(pos, len(text) - 1)] + text[min(pos, len(text) - 1) + 1:]
    if kind == 2:
        return text[:pos] + str(rng.choice(list(_INSERTABLE))) + text[pos:]
    if kind == 3 and len(lines) > 2:  # drop, duplicate or swap step lines
        i, j = rng.choice(len(lines) - 1, 2, replace=True)
        op = int(rng.integers(3))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if kind == 4:  # truncate
        return text[:pos]
    if kind == 5:  # commute a step's operands (still valid for + and *)
        i = int(rng.integers(len(lines)))
        for op in "+-*/":
            if op in lines[i][1:] and "=" in lines[i]:
                lhs, rhs = lines[i].split("=", 1)
                a, b = lhs[0] + lhs[1:].split(op, 1)[0], lhs[1:].split(op, 1)[1]
                lines[i] = f"{b}{op}{a}={rhs}"
                return "\n".join(lines)
    if kind == 6:  # a different final answer
        return text[:text.rfind("#") + 1] + str(int(rng.integers(0, 100)))
    if kind == 7:  # text after the answer line, maybe another answer
        return text + str(rng.choice(["\nok", "\n#1", "\n", "#", "0"]))
    if kind == 8:  # a number with a leading zero, or too many digits
        return text[:pos] + str(rng.choice(["0", "1234567"])) + text[pos:]
    if kind == 9:  # a true step on numbers seen so far: fine, or one used up or not there
        numbers = [int(v) for v in re.findall("[0-9]+", prompt + text)]
        a, b = sorted(rng.choice(numbers, 2), reverse=True)
        op = str(rng.choice(list("+-*")))
        lines.insert(int(rng.integers(len(lines))), f"{a}{op}{b}={eval(f'{a}{op}{b}')}")
        return "\n".join(lines)
    return text


def _noisy_tokens(text, rng, n_tokens):
    """Ids as a rollout may leave them: maybe pads or bos inside, EOS then junk, a length
    that stops early or late. Returns (ids, length, the text the Python checker sees)."""
    ids = TOK.encode(text)
    if rng.random() < 0.15:
        ids.insert(int(rng.integers(len(ids) + 1)), int(rng.choice([PAD, BOS])))
    if rng.random() < 0.4:
        ids += [EOS] + TOK.encode(str(rng.choice(["#1", "\n#2,3", "junk"])))
    length = len(ids) + int(rng.choice([0, 0, 0, 1, -1, -3]))
    row = np.full(n_tokens, PAD, np.int32)
    row[:len(ids)] = ids
    stop = min(max(length, 0), ids.index(EOS) if EOS in ids else len(ids))
    return row, length, TOK.decode(ids[:stop])


@pytest.mark.parametrize("name", NAMES)
def test_jax_checker_equals_python_checker(name):
    task, checker = task_and_checker(name)
    rng = np.random.default_rng(123)
    problems = samples(task, 500, seed=11)
    n_tokens = task.max_solution_len + SLACK
    rows, lengths, seen = [], [], []
    for p in problems:
        text = p.solution
        if rng.random() < 0.6:
            for _ in range(int(rng.integers(1, 3))):
                text = _mutate(text, rng, p.prompt)
        row, length, visible = _noisy_tokens(text[:n_tokens - 8], rng, n_tokens)
        rows.append(row)
        lengths.append(length)
        seen.append(visible)
    targets = np.array([p.target for p in problems], np.int32)
    got = np.asarray(checker(np.stack(rows), np.array(lengths, np.int32), targets))
    want = np.array([task.check(p, s) for p, s in zip(problems, seen)])
    mismatches = [(s, bool(g)) for s, g, w in zip(seen, got, want) if g != w]
    assert not mismatches, mismatches[:5]
    assert 0.25 < want.mean() < 0.75  # both outcomes are well represented


def _random_walk(rng, target_len):
    """A countdown problem and a completion whose arithmetic is right but whose operands
    are drawn from every number seen so far, used up or not: availability decides."""
    numbers = [int(v) for v in rng.integers(1, 10, int(rng.integers(2, 5)))]
    seen, lines = list(numbers), []
    for _ in range(int(rng.integers(1, len(numbers) + 1))):
        a, b = sorted(rng.choice(seen, 2), reverse=True)
        op = str(rng.choice(["+", "-", "*", "/"] if b and a % b == 0 else ["+", "-", "*"]))
        c = {"+": a + b, "-": a - b, "*": a * b, "/": a // max(b, 1)}[op]
        lines.append(f"{a}{op}{b}={c}")
        seen.append(c)
    target = c if c and rng.random() < 0.8 else c + 1
    problem = Problem("", "", str(target), pad_target([target, *numbers], target_len))
    return problem, "\n".join(lines) + f"\n#{target}"


def test_countdown_checkers_agree_on_reuse():
    task, _ = task_and_checker("countdown")
    rng = np.random.default_rng(5)
    problems, completions = zip(*(_random_walk(rng, task.target_len) for _ in range(500)))
    want = np.array([task.check(p, c) for p, c in zip(problems, completions)])
    assert want.tolist() == jax_results("countdown", problems, completions)
    assert 0.15 < want.mean() < 0.85


def test_sft_buckets_are_a_x125_ladder_capped_at_the_budget():
    from jaxrl.tasks.batches import bucket_ladder, bucket_len

    # 16, then x1.25 rounded up to 16 (20 -> 32, 40 -> 48, 60 -> 64, 100 -> 112, 140 -> 144,
    # 180 -> 192, 300 -> 304), each kept while x1.25 of it fits under the cap (304 * 1.25 =
    # 380 does; 384 * 1.25 = 480 does not).
    assert bucket_ladder(433) == [16, 32, 48, 64, 80, 112, 144, 192, 240, 304, 433]
    assert bucket_ladder(49) == [16, 32, 49]  # not 48 and 49: two shapes one token apart
    assert bucket_ladder(12) == [12]
    with_solutions = lambda *lengths: [Problem("p\n", "x" * (n - 1), "", ()) for n in lengths]  # noqa: E731
    assert bucket_len(with_solutions(3, 16), 433) == 16  # lengths count the EOS
    assert bucket_len(with_solutions(17), 433) == 32
    assert bucket_len(with_solutions(305, 2), 433) == 433
