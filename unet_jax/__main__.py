"""`unet-jax` and `python -m unet_jax`: the command line, in a process that first asked glibc for
huge pages (unet_jax/runtime/hugepages.py). That means starting the process once more, so it happens
here, before JAX and the rest of the command line are imported (about a second)."""

import sys

from unet_jax.runtime import hugepages


def main() -> None:
    hugepages.reexec()
    from unet_jax.cli import main as run_command

    sys.exit(run_command())


if __name__ == "__main__":
    main()
