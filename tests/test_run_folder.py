"""Writing a run folder's files and folders atomically."""

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
