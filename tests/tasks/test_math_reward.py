"""The JSONL math reward (math-verify, TRL's configuration) against hand-checked verdicts.

The cases are those the earlier hand-written checker was tested on. Each carries the verdict
a human grader of GSM8K / MATH answers would give; DEVIATIONS lists where math-verify, as
configured, gives the other one, so the test fails if math-verify changes in either
direction.
"""
import concurrent.futures
import os
import signal
import subprocess
import sys

import pytest

from jaxrl.tasks import math_reward


def boxed(s):
    return "\\boxed{" + s + "}"


# (completion, gold, human verdict)
STATED = [  # the completion states the gold answer, in some markup
    (r"so $\boxed{5}$.", "5"),
    (r"first \boxed{3}, then \boxed{4}", "4"),
    (r"$\boxed{\frac{1}{\sqrt{2}}}$", r"\frac{1}{\sqrt{2}}"),
    (r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}"),
    (r"\fbox{7}", "7"),
    (r"the answer is \boxed 5 here", "5"),
    (r"\boxed{\boxed{9}}", "9"),
    (r"\boxed{2} and later \boxed{12", "2"),  # the only closed box
    (r"\boxed{} then 41", "41"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("#### 1,000\nextra text 5", "1,000"),
    ("#### -3", "-3"),
    ("####\nthe answer is 6", "6"),
    ("So the final answer is 3.14.", "3.14"),
    ("The answer is: 12 apples. Next I check.", "12 apples"),
    ("Answer: x = 4", "x = 4"),
    ("The answer is 5. Then the answer is 6.", "6"),
    ("I get 3 and then -4.5", "-4.5"),
    ("it costs 1,234,567 in total", "1,234,567"),
    ("half is 1/2", "1/2"),
    ("about .5 of it", ".5"),
]
SAME = [  # equal final answers, each tried as \boxed{a} against gold b and the other way
    ("72", "72"), ("72.0", "72"), ("72.00", "72"), ("1000", "1,000"), (r"\$18", "18"),
    ("18 dollars", "18"), (r"5\text{ cm}", "5"), ("-5", "-5"), ("-5", "\u22125"),
    ("0.75", r"\frac{3}{4}"), ("3/4", r"\dfrac{3}{4}"), (r"\frac34", "0.75"),
    (r"-\frac{1}{2}", "-0.5"), (r"\frac{-1}{2}", r"-\frac{1}{2}"), (".5", "0.5"),
    (r"2\sqrt{2}", r"\sqrt{8}"), (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}"),
    (r"\frac{\pi}{2}", r"\pi/2"), (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
    ("2^{10}", "1024"), (r"50\%", "50"), (r"90^\circ", "90"), ("x = 5", "5"),
    (r"(1, 2)", "(1,2)"), (r"\left(\frac{1}{2}, 3\right)", "(0.5, 3)"),
    (r"[0, \infty)", r"[0,\infty)"), (r"\text{(C)}", "C"), ("(C)", "C"),
    ("Yes", r"\text{yes}"), ("x^2+1", "x^2 + 1"), (r"\infty", r"\infty"),
    (r"2\frac{1}{2}", "2.5"),  # a mixed number, as MATH answers write it
]
DIFFERENT = [
    ("71", "72"), ("720", "72"), ("7.2", "72"), ("-72", "72"),
    ("0.333", r"\frac{1}{3}"), ("0.3333333333", "1/3"),  # a rounding is not the number
    ("1.41421356237", r"\sqrt{2}"), ("3.14", r"\pi"), ("1.414", r"\sqrt{2}"),
    (r"2\sqrt{3}", r"\sqrt{8}"), ("3/4", "4/3"), (r"\frac{3}{4}", r"\frac{4}{3}"),
    ("1,2", "12"), ("(1,2)", "(2,1)"), ("(1,2)", "[1,2]"), ("(1,2)", "(1,2,3)"),
    ("2x", "2"), ("2 x", "2"), ("1.5.2", "0.3"), (r"2\frac{1}{2}", "1"), ("x", "y"),
    ("A", "B"), ("", "0"), ("0", ""), ("10^{10^{10}}", "10^{10^{10}}+1"),
]
WHOLE = [  # whole completions, some with gold answers that keep their markup
    ("Natalia sold 24 in May. 48+24=72\n#### 72", "72", True),
    ("48+24=72\n#### 72", "73", False),
    ("The total is $\\boxed{\\frac{3}{4}}$.", "0.75", True),
    ("The total is $\\boxed{\\dfrac{3}{4}}$.", r"\frac34", True),
    ("We get \\boxed{2\\sqrt{2}}", r"\sqrt{8}", True),
    ("so x = 3, and the answer is 4 apples.", "4", True),
    ("so x = 3, and the answer is 4 apples.", "3", False),
    ("It costs $1,250 in all.", "1250", True),
    ("She has -3 left", "-3", True),
    ("I am not sure.", "0", False),
    ("", "0", False),
    (r"\boxed{ } \boxed{", "0", False),
    ("\\boxed{5}", "so \\boxed{5}", True),
    ("\\boxed{18}", "He pays 9*2 = 18\n#### 18", True),
]
CASES = ([(c, g, True) for c, g in STATED]
         + [(boxed(a), b, True) for a, b in SAME] + [(boxed(b), a, True) for a, b in SAME]
         + [(boxed(a), b, False) for a, b in DIFFERENT]
         + [(boxed(b), a, False) for a, b in DIFFERENT]
         + WHOLE)

# (completion, gold, human verdict, math-verify's verdict). The earlier checker agreed with
# the human on all of these but the two marked "earlier: as math-verify".
NO_LATEX = "TRL's configuration reads LaTeX answers only; the prompt asks for \\boxed{}"
DEVIATIONS = [
    # Answers outside LaTeX score 0, as in TRL and open-r1 (a policy, not a parse error).
    *[(c, g, True, False) for c, g in STATED[9:]],  # ####, "answer is", the last number
    ("Natalia sold 24 in May. 48+24=72\n#### 72", "72", True, False),
    ("so x = 3, and the answer is 4 apples.", "4", True, False),
    ("It costs $1,250 in all.", "1250", True, False),  # one `$` opens no math
    ("She has -3 left", "-3", True, False),
    # Boxes math-verify does not read as the final answer.
    (r"first \boxed{3}, then \boxed{4}", "4", True, False),  # all boxes: the set {3, 4}
    (r"\fbox{7}", "7", True, False),  # \fbox is not a box to it
    (r"the answer is \boxed 5 here", "5", True, False),  # nor a brace-less \boxed
    (r"\boxed{} then 41", "41", True, False),  # an empty box, and 41 is not LaTeX
    # Normalization TRL's prediction config leaves off (malformed_operators=False).
    (boxed(r"\frac34"), "0.75", True, False),
    # A unit word it does not know is read as variables (18*d*o*l*l*a*r*s).
    (boxed("18 dollars"), "18", True, False),
    (boxed("18"), "18 dollars", True, False),
    # Decimals equal to 6 places count as equal (verify's float_rounding=6).
    (boxed("0.3333333333"), "1/3", False, True),
    (boxed("1/3"), "0.3333333333", False, True),
    (boxed("1.41421356237"), r"\sqrt{2}", False, True),  # earlier: as math-verify
    (boxed(r"\sqrt{2}"), "1.41421356237", False, True),  # earlier: as math-verify
    # Two decimal points read as a product, 1.5 * .2.
    (boxed("1.5.2"), "0.3", False, True),
    (boxed("0.3"), "1.5.2", False, True),
]
_DEVIATION = {(c, g): mv for c, g, _, mv in DEVIATIONS}


def test_deviations_are_cases_with_the_other_verdict():
    human = {(c, g): h for c, g, h in CASES}
    assert len(_DEVIATION) == len(DEVIATIONS)
    for c, g, h, mv in DEVIATIONS:
        assert human[(c, g)] is h and mv is not h, (c, g)


@pytest.mark.parametrize("completion, gold, human", CASES)
def test_verdict(completion, gold, human):
    assert math_reward.verdict(completion, gold) is _DEVIATION.get((completion, gold), human)


def test_scorer_from_threads():
    # HostReward calls from a thread pool, where math-verify's signal.alarm cannot be set.
    # The last pair would make sympy build 10**(10**10) with no timeout; in the worker
    # process math-verify's own timeout stops it, and the verdict is False.
    scorer = math_reward.Scorer(workers=2)
    pairs = [(boxed("0.75"), r"\frac{3}{4}", True), (boxed("7.2"), "72", False),
             ("48+24=72\n#### 72", "72", False), (boxed("10^{10^{10}}"), "10", False)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: scorer(p[0], p[1]), pairs))
    assert got == [expected for _, _, expected in pairs]


def test_scorer_replaces_a_dead_worker():
    scorer = math_reward.Scorer(workers=1)
    os.kill(scorer._pool.submit(os.getpid).result(), signal.SIGKILL)  # as the OOM killer would
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        scorer(boxed("1"), "1")
    assert scorer(boxed("1"), "1") is True


@pytest.mark.parametrize("bad", [None, 5, b"5", ["5"]])
def test_non_strings_score_false(bad):
    assert math_reward.verdict(bad, "5") is False
    assert math_reward.verdict(boxed("5"), bad) is False


def test_format_reward_reads_the_last_box():
    assert math_reward.has_boxed_answer(r"so \boxed{3}")
    assert not math_reward.has_boxed_answer(r"so \boxed{} or \boxed{3")
    assert not math_reward.has_boxed_answer("#### 3")


def test_importing_the_reward_imports_neither_sympy_nor_tfds():
    # The trainer imports it; only the worker processes need math-verify (and sympy).
    code = ("import sys, jaxrl.tasks.math_reward; "
            "bad = {'sympy', 'math_verify', 'tensorflow_datasets', 'tensorflow'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
