"""Training: `train_and_evaluate` (train.py), the train state and jitted steps, the exact
evaluator, devices and sharding, several processes, the per-epoch writers."""
