"""The library's user-facing errors: each one message that names the problem and what is valid.

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class MnistFlaxError(Exception):
  """Base class of every expected, user-caused failure."""


class ConfigError(MnistFlaxError, ValueError):
  """A config field has a missing, unknown, wrongly typed or impossible value."""


class DataError(MnistFlaxError, RuntimeError):
  """The dataset cannot be found or a data file is malformed."""


class CheckpointError(MnistFlaxError, RuntimeError):
  """A run directory holds no usable checkpoint, or one of another model/config."""


class NonFiniteLossError(MnistFlaxError, FloatingPointError):
  """The training loss became NaN or infinite."""


class PreemptedError(MnistFlaxError):
  """SIGTERM/SIGINT stopped training after a checkpoint was saved; rerun to resume."""

  def __init__(self, message: str, signum: int = 15):
    super().__init__(message)
    self.signum = signum


class ImageError(MnistFlaxError, ValueError):
  """An input image is missing, unreadable, blank or too large."""


class MissingExtraError(MnistFlaxError, ImportError):
  """A feature needs an optional package; the message says which extra installs it."""


class ImageTooLargeError(ImageError):
  """An image has more pixels than the limit (a decompression bomb, or a photo to resize)."""


class NoDigitError(ImageError):
  """An image decodes but holds no ink that stands out: blank, or far too faint."""


USER_ERRORS = (MnistFlaxError, OSError)
