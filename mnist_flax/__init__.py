"""mnist_flax: a JAX/Flax MNIST baseline that trains fast on a CPU and scales to TPUs.

    from mnist_flax import train_and_evaluate, get_config
    state = train_and_evaluate(get_config())

Attributes are imported lazily so that light entry points (`mnist-flax predict`) never pay for
TensorFlow or the training stack.
"""

import importlib

__version__ = '0.1.0'

_LAZY = {
    'train_and_evaluate': ('mnist_flax.training.train', 'train_and_evaluate'),
    'evaluate': ('mnist_flax.training.evaluation', 'evaluate'),
    'TrainState': ('mnist_flax.runs.state', 'TrainState'),
    'get_config': ('mnist_flax.config', 'default_config'),
    'load_config_file': ('mnist_flax.config', 'load_config_file'),
    'apply_overrides': ('mnist_flax.config', 'apply_overrides'),
    'load_datasets': ('mnist_flax.data', 'load_datasets'),
    'MODELS': ('mnist_flax.models', 'MODELS'),
}

__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
