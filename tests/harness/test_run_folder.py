"""Run folders: writing their files and folders atomically, reading a diverged run."""

import json

import pytest

from experiments import run_folder


def test_a_folder_replaces_a_folder_and_a_failed_write_keeps_it(tmp_path):
  out = tmp_path / "out"

  def folder_with(text):
    def write(tmp):
      tmp.mkdir()
      (tmp / "a.txt").write_text(text)

    return write

  run_folder.write_atomic(out, folder_with("first"))
  run_folder.write_atomic(out, folder_with("second"))
  assert [p.name for p in out.iterdir()] == ["a.txt"] and (out / "a.txt").read_text() == "second"

  def fail_halfway(tmp):
    folder_with("third")(tmp)
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    run_folder.write_atomic(out, fail_halfway)
  assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "a.txt").read_text() == "second"


@pytest.mark.parametrize(
  "marker, diverged_at",
  [(None, None), ({"step": 41, "loss": "nan"}, 41), ({"step": "41"}, "error"), ("nan", "error")],
)
def test_a_diverged_run_exposes_its_step_and_a_malformed_marker_is_one_line(
  tmp_path, marker, diverged_at
):
  (tmp_path / "config.json").write_text(
    json.dumps({"total_iter": 100, "seed": 3, **({} if marker is None else {"diverged": marker})})
  )
  (tmp_path / "metrics.jsonl").write_text('{"step": 0, "train_loss": 2.3}\n')
  if diverged_at == "error":
    with pytest.raises(run_folder.NotARunError) as error:
      run_folder.load_run(tmp_path)
    assert str(error.value) == (
      f"{tmp_path / 'config.json'}: diverged is {marker!r}, expected an object such as "
      '{"step": 41, "loss": "nan"}; mend or remove that key'
    )
    return
  run = run_folder.load_run(tmp_path)
  assert (run.diverged_at, run.seed, run.last_step, run.complete) == (diverged_at, 3, 0, False)


def test_checkpoint_steps_are_the_complete_saves_in_step_order(tmp_path):
  for name in ("10", "2", "30.orbax-checkpoint-tmp-1234", "notes"):
    (tmp_path / name).mkdir()
  assert run_folder.checkpoint_steps(tmp_path) == [2, 10]
  assert run_folder.checkpoint_steps(tmp_path / "absent") == []
