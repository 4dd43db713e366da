"""One exception tree for the whole supervisor.

Every error carries structured fields so that the CLI, the control socket and the logs
can report it without parsing its message. `code` is the stable wire code (see
`protocol.ErrorCode`) and the CLI maps it to an exit status.
"""

from __future__ import annotations


class IroncliwError(Exception):
    """Base of every error the supervisor raises on purpose."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(IroncliwError):
    """A config file that cannot be used: names the file, the field path and what was expected."""

    code = "BAD_CONFIG"

    def __init__(self, file: str, path: str, expected: str) -> None:
        self.file = file
        self.path = path
        self.expected = expected
        where = f" at {path}" if path else ""
        super().__init__(f"{file}: {expected}{where}")


class SpawnError(IroncliwError):
    """The OS refused to start a component's command."""

    code = "SPAWN_FAILED"

    def __init__(self, component: str, command: list[str], reason: str) -> None:
        self.component = component
        self.command = command
        self.reason = reason
        super().__init__(f"cannot start {component}: {command[0]!r}: {reason}")


class UnknownComponent(IroncliwError):
    code = "UNKNOWN_COMPONENT"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no component named {name!r}")


class Refused(IroncliwError):
    """A valid request that the supervisor will not carry out in its current state."""

    code = "REFUSED"


class ShuttingDown(Refused):
    """A start asked for while the supervisor is stopping everything."""

    code = "SHUTTING_DOWN"


class BadRequest(IroncliwError):
    """An HTTP request body that is not what the endpoint takes."""

    code = "BAD_REQUEST"


class ProtocolError(IroncliwError):
    """A control-socket frame or message that does not follow the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AlreadyRunning(IroncliwError):
    code = "ALREADY_RUNNING"

    def __init__(self, runtime_dir: str, pid: int | None) -> None:
        self.runtime_dir = runtime_dir
        self.pid = pid
        who = f" (pid {pid})" if pid else ""
        super().__init__(f"another supervisor{who} is already running on {runtime_dir}")


class NotRunning(IroncliwError):
    """No supervisor answers on the control socket."""

    code = "NOT_RUNNING"

    def __init__(self, socket_path: str, reason: str) -> None:
        self.socket_path = socket_path
        super().__init__(f"no supervisor is running on {socket_path} ({reason})")


class Busy(IroncliwError):
    """The supervisor runs but cannot take the connection now (e.g. a full listen backlog)."""

    code = "BUSY"


class RemoteError(IroncliwError):
    """An error reply from the supervisor, as the client sees it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SamplerStuck(IroncliwError):
    """The memory sampler's thread did not answer a request for a reading in time."""

    def __init__(self, waited_s: float) -> None:
        self.waited_s = waited_s
        if waited_s:
            super().__init__(f"the memory sampler did not take a reading within {waited_s:g} s")
        else:
            super().__init__("the memory sampler is still stuck in an earlier reading")


class NoSuchProcess(IroncliwError):
    """The process is gone (or its PID now names another process)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        super().__init__(f"no process {pid}")


class AccessDenied(IroncliwError):
    """The OS refused to let us read or signal the process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        super().__init__(f"not allowed to reach process {pid}")
