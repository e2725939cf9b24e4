"""Defaults shared by every experiment; each config overrides what differs, nothing else.

The defaults are the paper's full-MNIST run (the six-layer MLP with 400-unit
hidden layers, ReLU after every layer but the last) and, for ``model="vgg"``,
VGG19's convs. The comment after each key is its description in ``--help``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Keys every experiment accepts (each is a command-line flag: ``--batch-size 200``)."""
  config = ml_collections.ConfigDict()
  config.experiment = ""  # the config's name (set by each config, not a flag)
  config.method = "pathprox"  # "pathprox", "wd" (weight decay), "gmp" (magnitude) or "slimming"
  config.optimizer = "sgd"  # "sgd" (pathprox_sgd / SGD on loss + λ/2 ||kernels||²) or "adamw"
  config.threshold_rule = "fixed_point"  # pathprox + sgd: "fixed_point" (λγ/(1-β)) or "paper" (λγ)
  config.dataset = "mnist"  # "mnist", "fashion_mnist" or "cifar10"
  config.data_dir = ""  # TFDS data_dir for prepared data ("": TFDS's default)
  config.raw_data_dir = ""  # raw files to prepare from offline ("": $PATHPROX_RAW_DATA_DIR)
  config.allow_unofficial_data = False  # prepare from raw files that are no official release
  config.split = "holdout"  # "holdout": last val_size of a seed-42 permutation; "subset"
  config.val_size = 5000  # split="holdout": images held out of training for validation
  config.train_per_class = 100  # split="subset": images per class in the training set
  config.augment = False  # random crop (black padding 4) and flip of training batches only
  config.model = "mlp"  # "mlp" (features, relu), "vgg" (channels, pool_after), "vit" or "resnet"
  config.features = (400, 400, 400, 400, 400, 10)  # MLP: output width of each Dense layer
  config.relu = (True, True, True, True, True, False)  # MLP: ReLU after each layer or not
  config.channels = (64, 64, 128, 128, 256, 256, 256, 256) + (512,) * 8  # VGG: each conv's width
  config.pool_after = (1, 3, 7, 11)  # VGG: indices of the convs followed by a 2x2 max-pool
  config.lr = 0.1  # learning rate (the schedule's peak)
  config.lr_schedule = "step"  # "step" (× lr_decay at lr_milestones) or "cosine" (to 0 at the end)
  config.lr_milestones = ()  # lr_schedule="step": epochs at which lr is multiplied by lr_decay
  config.lr_decay = 0.1  # lr_schedule="step": factor applied to lr at each milestone
  config.warmup_iter = 0  # steps of linear warm-up from 0 to lr (then the schedule)
  config.momentum = 0.0  # optimizer="sgd": momentum β (0: plain SGD)
  config.group_source = "auto"  # "auto" (annotations, checked on the trace) or "annotations"
  config.balance = True  # PathProx's layer balance of consecutive groups (a chain: MLP, VGG)
  config.weight_decay = 1e-4  # λ: PathProx's threshold scale, or the baseline's weight decay
  config.target_flops = 0.0  # fraction of the FLOPs to keep (cost-weighted units; 0 or 1: none)
  config.prox_start = 0  # --target-flops: first step of the ramp to the target (dense before it)
  config.heal_start = 0  # --target-flops: first heal step (ramp's end; the off units stay off)
  config.scale_l1 = 1e-5  # method="slimming": L1 on the units' BatchNorm scales (Liu et al.)
  config.heal_weight_decay = 0.0  # --target-flops, pathprox: grouped kernels' decay in the heal
  config.kept_threshold = "cost"  # --target-flops, pathprox: kept units at c_g·τ or "uniform" τ
  config.regularize_bias = False  # penalise biases too (pathprox: ||[w_i, b_i]||; wd: decay them)
  config.batch_size = 200  # global batch, split over all devices
  config.total_iter = 50_000  # training steps (on --resume: only where the lr stays the same)
  config.log_freq = 1000  # steps between evaluations (a row of metrics.jsonl)
  config.save_freq = 10_000  # steps between checkpoints (also saved at the end)
  config.eval_batch_size = 10_000  # examples per evaluation batch
  config.seed = 0  # initialisation and data-order seed
  config.init_params = ""  # orbax params to start from, not the random init (compact/prune params/)
  config.parallel = "shard_map"  # data parallelism: "shard_map" or "pmap"
  config.num_devices = 0  # devices to train on (0: all)
  config.tensorboard = False  # also write TensorBoard scalars to <workdir>/tensorboard
  config.progress = True  # show a progress bar
  return config
