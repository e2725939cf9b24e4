"""One job, one config: processes started with different configs or run options are refused.

Two real processes (``jax.distributed`` with gloo on 127.0.0.1) through the real CLI; both
must exit 2 with one line naming what differs, before anything is written and without
hanging (the test waits on the processes' exits, with a timeout as a safety net only).
"""

import pytest
from conftest import flags
from test_multihost import finish, start


@pytest.mark.slow  # two processes
@pytest.mark.parametrize("differing", ["lr", "workdir"])
def test_processes_that_disagree_exit_2_with_one_line(raw_mnist, tmp_path, differing):
  base = flags(raw_mnist, tmp_path, total_iter=20)
  values = {"lr": ("0.05", "0.1"), "workdir": (tmp_path / "a", tmp_path / "b")}[differing]
  argv = [
    [*base, "--workdir", tmp_path / "a", f"--{differing}", value] for value in values
  ]  # fmt: skip
  job = start(argv, processes=2, devices_per_process=1, per_process=True)
  results = finish(job, timeout=240)
  expected = f"{differing} (process 0: {values[0]}, process 1: {values[1]})"
  for code, err in results:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: the processes of this job disagree: ")
    assert expected in lines[0]
  assert not any((tmp_path / name / "checkpoints").exists() for name in ("a", "b"))
