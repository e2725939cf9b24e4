"""Per-unit path norms: logged per group at every evaluation, and drawn as a histogram."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_rows
from test_evaluation import FEATURES, make_evaluator

import pathprox_jax as pp
from experiments import cli, evaluation, models, unit_histogram

# One xdist worker runs this file (--dist loadgroup): its ViT run is trained once.
pytestmark = pytest.mark.xdist_group("unit_logging")

VIT = ["--num-heads", "4,4", "--mlp-dim", "16,16", "--width", "16", "--head-dim", "4"]


def switched_off(params, layer, rows):
  """``params`` with the "out" rows ``rows`` of Dense ``layer`` set to zero."""
  params = dict(params)
  kernel = params[layer]["kernel"].at[rows].set(0.0)
  params[layer] = {**params[layer], "kernel": kernel}
  return params


@pytest.mark.slow
def test_each_group_logs_its_smallest_and_median_path_norm_of_units_on():
  evaluator, params, _, _ = make_evaluator(1)
  # Group 0's "out" layer is Dense_1 (16 units): 5 off; group 1's is Dense_3: all off.
  params = switched_off(switched_off(params, "Dense_1", jnp.arange(5)), "Dense_3", jnp.arange(16))
  metrics = evaluator(params)
  model = models.MLP(FEATURES, (True, False, True, False, False))  # make_evaluator's
  groups = pp.group_spec(model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"])
  scores = pp.unit_path_norms(params, groups)
  assert set(scores) == {0, 1}
  on = np.asarray(scores[0])[5:]
  assert np.all(on > 0) and not np.any(np.asarray(scores[0])[:5])
  assert metrics["unit_path_norm_min/g0"] == pytest.approx(on.min(), rel=1e-6)
  assert metrics["unit_path_norm_median/g0"] == pytest.approx(np.median(on), rel=1e-6)
  assert metrics["unit_path_norm_min/g1"] == metrics["unit_path_norm_median/g1"] == 0


def test_a_group_without_units_has_no_entry():
  params = {"w": jnp.ones((3, 0)), "v": jnp.ones((0, 2))}
  groups = {"w": pp.GroupSpec(0, "in"), "v": pp.GroupSpec(0, "out")}
  assert evaluation.active_unit_path_norms(params, groups) == {}


@pytest.fixture(scope="module")
def vit_run(raw_mnist, tmp_path_factory):
  """A 2-step PathProx ViT run, evaluated at every step."""
  tmp = tmp_path_factory.mktemp("vit")
  argv = ["--workdir", str(tmp / "run"), "--raw-data-dir", str(raw_mnist),
          "--allow-unofficial-data", "true", "--data-dir", str(tmp / "tfds"), "--val-size", "100",
          "--batch-size", "40", "--eval-batch-size", "200", "--progress", "false", *VIT,
          "--total-iter", "2", "--log-freq", "1", "--save-freq", "2"]  # fmt: skip
  assert cli.main("fashion_mnist_vit", argv) == 0
  return tmp / "run"


@pytest.mark.slow  # trains a ViT run (vit_run)
def test_vit_rows_log_heads_and_neurons_apart(vit_run):
  rows = read_rows(vit_run)
  assert [r["step"] for r in rows] == [0, 1, 2]
  for row in rows:  # groups 0 and 2 are the blocks' heads, 1 and 3 their FFN neurons
    for g in range(4):
      assert 0 < row[f"unit_path_norm_min/g{g}"] <= row[f"unit_path_norm_median/g{g}"]


@pytest.mark.slow  # trains a ViT run (vit_run)
def test_the_histogram_is_written_into_the_run_folder(vit_run, capsys):
  assert unit_histogram.main([str(vit_run)]) == 0
  path = vit_run / unit_histogram.FIGURE
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert f"wrote {path}" in capsys.readouterr().out


def test_the_histogram_has_a_panel_per_group_counting_zeros():
  norms = {0: np.array([0.0, 0.5, 1e-4, 2.0]), 1: np.array([0.0, 0.0, 3.0]), 2: np.zeros(2)}
  fig = unit_histogram.unit_path_norms_figure(norms, models.vit_group_names(2), "title")
  panels = [ax for ax in fig.axes if ax.get_visible()]
  assert [ax.get_title() for ax in panels] == [
    f"{models.vit_group_names(2)[0]}: 3 on, 1 at 0",
    f"{models.vit_group_names(2)[1]}: 1 on, 2 at 0",
    f"{models.vit_group_names(2)[2]}: 0 on, 2 at 0",
  ]
  assert sum(p.get_height() for p in panels[0].patches) == 3  # every unit on is in a bin


def test_a_folder_without_a_run_is_a_one_line_error(tmp_path, capsys):
  assert unit_histogram.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "is not a run folder" in err
