"""The mask file formats `unet-jax predict --format` offers, and the suffix each writes. Apart from
the code that writes them, so that the command line lists them without importing numpy or JAX."""

MASK_FORMATS = {"png": ".png", "tiff": ".tif"}
