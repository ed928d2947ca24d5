"""Training: `train_and_evaluate` (train.py), the train state and jitted steps, devices and
sharding, several processes, the per-epoch writers; restoring a run and scoring it (`eval`)."""
