"""Defaults shared by every experiment; each config overrides what differs."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Keys every experiment accepts (each is a command-line flag: ``--batch-size 200``)."""
  config = ml_collections.ConfigDict()
  config.experiment = ""
  config.method = "pathprox"  # "pathprox" (pathprox_sgd) or "wd" (SGD on loss + λ/2 ||kernels||²)
  config.dataset = "mnist"
  config.data_dir = ""  # TFDS data_dir for prepared data ("": TFDS's default)
  config.raw_data_dir = ""  # raw files to prepare from offline ("": $PATHPROX_RAW_DATA_DIR)
  config.split = "holdout"  # "holdout": last val_size of a seed-42 permutation; "subset"
  config.val_size = 5000
  config.train_per_class = 100  # split="subset": images per class in the training set
  config.augment = False  # random crop (pad 4) and horizontal flip, inside the jitted step
  config.model = "mlp"
  config.features = (400, 400, 400, 400, 400, 10)
  config.relu = (True, False, True, False, True, False)
  config.channels = (64, 64)
  config.pool_after = (1,)
  config.lr = 0.1
  config.lr_milestones = ()  # epochs at which the learning rate is multiplied by lr_decay
  config.lr_decay = 0.1
  config.momentum = 0.0
  config.weight_decay = 1e-4
  config.batch_size = 200  # global batch, split over all devices
  config.total_iter = 50_000
  config.log_freq = 1000
  config.save_freq = 10_000
  config.eval_batch_size = 10_000
  config.seed = 0
  config.parallel = "shard_map"  # or "pmap"
  config.num_devices = 0  # devices to train on (0: all)
  config.tensorboard = False  # also write TensorBoard scalars to <workdir>/tensorboard
  config.progress = True
  return config
