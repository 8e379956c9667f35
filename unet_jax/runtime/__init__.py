"""The process and its devices: coordination of many processes, the mesh and its shardings,
XLA:CPU flags, huge pages, and safe file writing. Importing this package imports no JAX."""
