"""SIGKILL at random points, including during a checkpoint save, then the same command
again: the final params and metrics equal an uninterrupted run's (tests/kill_resume.py)."""
import kill_resume


def test_hard_kills_during_a_save_and_a_step_leave_the_uninterrupted_result(tmp_path):
    sft_steps, rl_steps = 3, 4
    kill_resume.uninterrupted_run(tmp_path / "reference", sft_steps, rl_steps)
    hits = kill_resume.killed_run(tmp_path / "killed", sft_steps, rl_steps, kills=2, seed=1)
    assert len(hits) == 2 and {h["kind"] for h in hits} == {"save", "step"}
    kill_resume.compare(tmp_path / "reference", tmp_path / "killed", sft_steps + rl_steps)
