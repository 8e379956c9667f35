"""The defaults of how a predicted foreground becomes objects (`unet_jax.inference.instances`),
apart from the numpy code so that the command line shows them without importing numpy."""

# Pixels each object grows over the background next to it. The network trained with the paper's
# weight map draws the gap between touching cells wider than its one-pixel target; growing by
# about that much gives the cells back their facing edges (measured: README "Instances").
DEFAULT_GROWTH_DISTANCE = 2.0
# Predicted objects smaller than this many pixels are dropped before growing (0: keep all).
DEFAULT_MIN_SIZE = 0
