"""Core: data, augmentation, corruptions, models, the training loop, schedules, metrics,
checkpoints, BatchNorm tools, statistics and project paths. Nothing here knows about merging,
runs or chapters."""
