"""The configs as `unet_jax` names them: the framework-free `unet_config` package, re-exported.

The configs live outside `unet_jax` so that `unet_torch` can import them without running this
package's `__init__`, which imports JAX.
"""

from unet_config import *  # noqa: F403 (the whole public API, re-exported)
from unet_config import __all__  # noqa: F401
