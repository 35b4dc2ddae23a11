"""The exception tree of the ``fluxrec`` package (config, CLI and the one-machine stack).

::

    FluxrecError                      root: every error the CLI reports in one line
    ├── ConfigError (ValueError)      a bad configuration file: names the key, the file, the fix
    └── StackError                    the one-machine stack could not be installed or run
        ├── ToolMissing               java / mvn / redis-server not found
        ├── ResolveError              Maven could not resolve the jars
        ├── PortInUse                 a configured port is taken by another process
        ├── CorruptState              a service's state directory cannot be used
        └── ServiceStartError         a service exited or did not become ready in time

Every message is one line that says what went wrong and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CorruptState",
    "FluxrecError",
    "PortInUse",
    "ResolveError",
    "ServiceStartError",
    "StackError",
    "ToolMissing",
]


class FluxrecError(Exception):
    """Root of every error raised by the ``fluxrec`` package."""


class ConfigError(FluxrecError, ValueError):
    """A configuration value is missing, unknown or of the wrong type.

    ``key`` is the dotted path (``kafka.topics.samples``), ``file`` the YAML file.
    """

    def __init__(self, key: str, file: str, problem: str, fix: str = "") -> None:
        self.key, self.file, self.problem, self.fix = key, file, problem, fix
        msg = f"{file}: {key}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class StackError(FluxrecError):
    """The one-machine stack could not be installed, started or stopped."""


class ToolMissing(StackError):
    """A required program (java, mvn, redis-server) is not installed."""


class ResolveError(StackError):
    """Maven could not resolve the jars of a pom."""


class PortInUse(StackError):
    """A port from the config is already bound by a process the stack did not start."""


class CorruptState(StackError):
    """A service's state directory exists but cannot be used."""


class ServiceStartError(StackError):
    """A service exited during start-up or did not become ready in time."""
