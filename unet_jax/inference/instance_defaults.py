"""The defaults of how a prediction becomes objects (`unet_jax.inference.instances`), apart from
the numpy code so that the command line shows them without importing numpy.

Measured (benchmarks/results/instances-cpu-intel-xeon/instance_tuning.md): on the built-in
touching cells, the `--preset instances` network draws the gap between touching cells several
pixels wide and leaves a foreground probability of about 0.05 to 0.5 on the trimmed edges;
growing each object up to 4 pixels over background whose foreground probability exceeds 0.05,
after dropping objects under 16 pixels, gave the best instance F1 and pixel IoU together. Chosen
on seeds 0 and 1; on six more seeds' held-out images (`independent_test.md` there) they score
instance F1 0.967 and pixel IoU 0.944, and are the best F1 of the same grid there too.
"""

DEFAULT_GROWTH_DISTANCE = 4.0  # pixels each object may grow over the background next to it
DEFAULT_MIN_SIZE = 16  # predicted objects smaller than this many pixels are dropped before growing
DEFAULT_EXTENT_THRESHOLD = 0.05  # growth claims only pixels whose foreground probability exceeds this
