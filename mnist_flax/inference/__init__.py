"""Inference: a classifier restored from a run or an exported model, preprocessing of a
user's image, ensembles and test-time augmentation, export."""
