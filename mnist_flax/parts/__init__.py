"""The pure pieces a config names: losses, metrics, optimizers and schedules, augmentation."""
