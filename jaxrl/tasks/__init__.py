"""Verifiable tasks: embedded, procedurally generated problems with exact checkers in
Python and in JAX (see base.py for the completion format and the checkers' contract)."""
from jaxrl.tasks.base import DEFAULT_DIFFICULTY, Problem, Task
from jaxrl.tasks.registry import TASKS, get_task

__all__ = ["DEFAULT_DIFFICULTY", "Problem", "TASKS", "Task", "get_task"]
