"""Finding the stated final answer: the last closed \\boxed{}, the #### line (hand-worked)."""
import pytest

from jaxrl.tasks.math_checker import after_hashes, last_boxed


@pytest.mark.parametrize("text, expected", [
    (r"so $\boxed{5}$.", "5"),
    (r"first \boxed{3}, then \boxed{4}", "4"),  # the last one wins
    (r"$\boxed{\frac{1}{\sqrt{2}}}$", r"\frac{1}{\sqrt{2}}"),  # nested braces
    (r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}"),
    (r"\boxed{{a}{b}{\{c\}}}", r"{a}{b}{\{c\}}"),
    (r"\fbox{7}", "7"),
    (r"the answer is \boxed 5 here", "5"),
    (r"\boxed{\boxed{9}}", "9"),  # the last box to open: the inner one
    (r"\boxed{2} and later \boxed{12", "2"),  # a truncated last box is passed over
    (r"\boxed{ } then \boxed{41}", "41"),
    (r"\boxed{41} then \boxed{ }", "41"),  # so is an empty one
    (r"\boxed{ } \boxed{", None),
    ("no box", None),
    ("", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("#### 1,000\nextra text 5", "1,000"),  # up to the end of that line
    ("#### 1\n#### -3", "-3"),  # the last one wins
    ("####\nthe answer is 6", ""),
    ("no hashes", None),
])
def test_after_hashes(text, expected):
    assert after_hashes(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{" * 20000, None),  # unclosed, nested: one pass, not quadratic
    ("\\boxed " * 20000, "\\boxed"),  # the last `\\boxed` is the argument of the one before
    ("{" * 50000 + "}" * 50000, None),
])
def test_adversarial_inputs(text, expected):
    assert last_boxed(text) == expected
