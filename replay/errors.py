"""The exception tree of the ``replay`` package (event sources replayed into Kafka).

::

    ReplayError (FluxrecError)                  root
    ├── BadReplayConfig (ConfigError)           a ``replay.*`` value is unusable: names the key
    ├── LogNotFound (FileNotFoundError)         the log folder or file of a real source is absent
    ├── BadLog (ValueError)                     a log file cannot be used: file, line, column, fix
    │   └── BadLogRow                           a row of a module source's log cannot be read
    └── ProduceError                            Kafka refused or could not be reached

Every message is one line that says what went wrong and how to fix it.
"""

from __future__ import annotations

from fluxrec.errors import ConfigError, FluxrecError

__all__ = ["BadLog", "BadLogRow", "BadReplayConfig", "LogNotFound", "ProduceError", "ReplayError"]


class ReplayError(FluxrecError):
    """Root of every error the replay package raises."""


class BadReplayConfig(ReplayError, ConfigError):
    """A ``replay`` config value (or the flag that overrides it) cannot be used.

    ``key`` is the dotted config key (``replay.faults.duplicate``).
    """


class LogNotFound(ReplayError, FileNotFoundError):
    """The log folder or file that a real source reads does not exist."""


class BadLog(ReplayError, ValueError):
    """A log file cannot be used: empty, not of its format, a column missing, or no row
    readable. The message starts with ``file`` or ``file:line``."""


class BadLogRow(BadLog):
    """A row of a module source's log (Taobao) has the wrong columns or an unreadable value."""

    def __init__(self, file: str, line: int, problem: str) -> None:
        self.file, self.line, self.problem = file, line, problem
        super().__init__(
            f"{file}:{line}: {problem} (is --source right for this file? see replay/SOURCES.md)"
        )


class ProduceError(ReplayError):
    """Producing to Kafka failed: the broker is unreachable or refused a record."""
