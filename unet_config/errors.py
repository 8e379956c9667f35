"""The one base class of the project's expected errors.

An expected error is one a user can fix: a bad option, a file that can't be read or may not
be written, a run directory in use. Its message names the path or option and the fix, so the
command line prints it as one line (exit status 2) instead of a traceback. Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UNetError(Exception):
    """An error the user can fix; the message says what and how."""


class ConfigError(UNetError, ValueError):
    """A config field (or a command-line option) with a value that can't work."""


class MissingFileError(UNetError, FileNotFoundError):
    """An input file or folder that is not there."""
