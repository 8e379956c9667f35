"""Weights in and out: the port table between Flax and PyTorch, torch key namings, the architecture
a weights file's shapes imply, weights files of both frameworks, conversion, and starting a run
from a weights file. Imports no torch until a torch file is read or written."""
