"""The error of a data set that can't be used as it is."""

from unet_jax.config import UNetError


class DataError(UNetError, ValueError):
    """A data set on disk that can't be used as it is; the message names the file and the fix."""
