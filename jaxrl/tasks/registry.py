"""Embedded tasks by name: `get_task("countdown", difficulty=2)`."""
from __future__ import annotations

from jaxrl.tasks.arithmetic import Arithmetic
from jaxrl.tasks.base import DEFAULT_DIFFICULTY, Task
from jaxrl.tasks.countdown import Countdown
from jaxrl.tasks.sort import Sort

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Arithmetic, Countdown, Sort)}


def get_task(name: str, difficulty: int = DEFAULT_DIFFICULTY,
             max_steps: int | None = None) -> Task:
    """The task `name` at `difficulty` (0 = easiest); `max_steps` caps the steps of a
    problem below or above the level's default, and so the length of its solution."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid names: {sorted(TASKS)}")
    return TASKS[name](difficulty, max_steps)
