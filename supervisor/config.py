"""The TOML config: a strict schema, cross-field checks and clear errors.

Each table decodes into a Struct with `forbid_unknown_fields=True`, so a typo is an error
rather than a silently ignored key. Every error names the file, the `$.path` of the field
and what was expected (`ConfigError`); the CLI turns it into exit status 2.

Nothing here touches the process table or signals: `"python"` as a command and signal
names are resolved by the launcher, paths under the user's home by `resolve_paths`, which
takes the environment as an argument.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from . import probespec
from .errors import ConfigError
from .locations import default_runtime_dir, pick, socket_path
from .model import Priority, RestartMode
from .probespec import HttpAction, Interval, Liveness, NonNegSeconds, Port, Readiness, Seconds, Table, Trim

# Names a config may use for stop_signal / trim_signal; the launcher maps them to numbers.
SIGNAL_NAMES = frozenset(
    {"SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGWINCH", "SIGPWR"}
)
# A trim asks a component to drop caches: it must never end or freeze it, so neither the
# signals that cannot be caught nor the conventional "please exit" ones may be a trim.
TRIM_SIGNAL_NAMES = frozenset({"SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGPWR"})
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

# Upper bounds keep a typo (or `inf`, `1e308`) from turning into a supervisor that never
# samples, never stops a component or overflows a timer: sampling intervals at most an
# hour, other durations at most a day (probespec.py's Interval and Seconds), sizes at most
# 16 TiB. NaN fails every bound.
MAX_MB = 16 * 1024 * 1024  # 16 TiB
Megabytes = Annotated[int, Meta(ge=0, le=MAX_MB)]
Percent = Annotated[float, Meta(gt=0, le=100)]


# The command of a component registered without one (the Python API's in-process objects, or
# an HTTP registration that an owner process loads): the supervisor never runs it.
IN_PROCESS_COMMAND = ["<in-process>"]


def without_command(table: dict[str, Any], adopt_pid: int | None) -> dict[str, Any]:
    """The table of a component registered without a command: one that adopts a running
    `adopt_pid`, or an in-process one; the supervisor never starts either itself."""
    command = [f"<adopted pid {adopt_pid}>"] if adopt_pid is not None else IN_PROCESS_COMMAND
    return {**table, "command": command, "restart": "never", "autostart": False}


class ProfileSpec(Table, frozen=True):
    """An alternative way to run a component, needing less memory (profiles.py); what it
    leaves out is the component's own."""

    command: Annotated[list[str], Meta(min_length=1)] | None = None
    env: dict[str, str] = {}  # on top of the component's
    estimated_mb: Megabytes | None = None
    inputs: list[str] | None = None


class ComponentSpec(Table, frozen=True):
    command: Annotated[list[str], Meta(min_length=1)]
    name: str | None = None  # the table's key; if given it must match
    cwd: str | None = None  # relative to the config file's directory; default: that directory
    env: dict[str, str] = {}
    priority: Priority = Priority.MEDIUM
    estimated_mb: Megabytes = 100
    autostart: bool = True
    after: list[str] = []
    restart: RestartMode = RestartMode.ON_FAILURE
    backoff_initial_s: Seconds = 0.5
    backoff_max_s: Seconds = 30.0
    backoff_jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2
    max_restarts: Annotated[int, Meta(ge=0, le=1_000_000)] = 5  # more restarts than this within the window: FATAL
    restart_window_s: Seconds = 60.0
    stop_signal: str = "SIGTERM"
    stop_grace_s: NonNegSeconds = 5.0
    trim_signal: str | None = None  # the older spelling of trim = { signal = ... }
    trim: Trim | None = None
    # Unloads its models without ending the process (a server holding several: Ollama's
    # `keep_alive: 0`); the next unload, if memory is still short, stops it.
    unload: HttpAction | list[HttpAction] | None = None
    ready: Readiness = Readiness()
    alive: Liveness | None = None
    # Its own port: what `${PORT}` means and where probe paths go. Unset, `${PORT}` in the
    # command, env, probes or proxy is a free loopback port chosen at each start.
    port: Port | None = None
    proxy: str | None = None  # the root URL of its API (the door forwards there), e.g. "http://127.0.0.1:${PORT}"
    serves: list[str] = []  # the model names the door routes to it (a request's `model` field)
    profiles: dict[str, ProfileSpec] = {}  # smaller ways to run it, in order of preference (profiles.py)
    idle_ttl_s: NonNegSeconds | None = None  # unloaded when idle this long, pressure or not; 0: never
    inputs: list[str] = []  # files whose size predicts its memory (e.g. the model it loads); relative to cwd
    gpu: bool = False  # holds its model in GPU memory: a load predicted above the GPU's ceiling is refused
    # Output beyond this rate (bursts up to output_burst_mb) is held back (`block`: the pipe
    # is not read for a while, so the writer waits) or dropped and counted (`drop`); 0: no limit.
    output_limit_mb_s: Annotated[float, Meta(ge=0, le=MAX_MB)] = 4.0
    output_burst_mb: Annotated[float, Meta(gt=0, le=MAX_MB)] = 16.0
    output_overflow: Literal["block", "drop"] = "block"


class SupervisorSection(Table, frozen=True):
    runtime_dir: str | None = None
    state_dir: str | None = None
    log_dir: str | None = None
    socket: str | None = None
    log_max_bytes: Annotated[int, Meta(ge=1024, le=MAX_MB * 1024 * 1024)] = 5 * 1024 * 1024
    log_backups: Annotated[int, Meta(ge=0, le=100)] = 3


class MemorySection(Table, frozen=True):
    warning_percent: Percent = 70.0
    critical_percent: Percent = 85.0
    emergency_percent: Percent = 95.0
    sample_interval_s: Interval = 2.0
    budget_mb: Annotated[int, Meta(ge=1, le=MAX_MB)] | None = None
    # Sampling speeds up to this under pressure, or when the worst-case fill rate could
    # cross the next threshold before the next regular sample (earlyoom's rule).
    fast_interval_s: Interval = 0.02
    max_fill_rate_mb_s: Annotated[float, Meta(gt=0, le=MAX_MB)] = 1000.0
    # Hysteresis: leave a state downwards only after staying this far below its threshold for hold_s.
    hysteresis_percent: Annotated[float, Meta(ge=0, le=20)] = 3.0
    hold_s: NonNegSeconds = 5.0
    # Linux PSI (some / full avg10, % of time stalled) that raises the state to WARNING / CRITICAL.
    psi_warning_avg10: Percent = 20.0
    psi_critical_avg10: Percent = 50.0
    # Sustained swap-out (MB/s over the last 10 s) that raises the state to WARNING / CRITICAL;
    # 0 switches a rule off. Not read at all on a machine without swap.
    swap_out_warning_mb_s: Annotated[float, Meta(ge=0, le=MAX_MB)] = 2.0
    swap_out_critical_mb_s: Annotated[float, Meta(ge=0, le=MAX_MB)] = 20.0
    trim_settle_s: NonNegSeconds = 2.0  # after a trim request, wait this long before measuring and escalating
    trim_cooldown_s: NonNegSeconds = 30.0  # at most one trim request per component per this long
    idle_unload_s: NonNegSeconds = 300.0  # WARNING unloads LOW components idle this long
    # A component whose tree used at least this % of one core since the last look (every
    # 10 s or so) counts as used, as a `touch` does; 0: only touches and starts count.
    used_cpu_percent: Percent = 2.0
    max_frozen_s: Seconds = 60.0  # then thawed, or unloaded if memory is still short
    recovery_hold_s: NonNegSeconds = 10.0  # HEALTHY this long before thawing and reloading
    wake_settle_s: NonNegSeconds = 5.0  # after the machine wakes from sleep, act only after this
    dry_run: bool = False  # log and publish actions without carrying them out
    early_freeze_s: NonNegSeconds = 3.0  # WARNING freezes a LOW component set to reach CRITICAL sooner than this
    # The share of runs a prediction should cover once its margin is calibrated (predictor.py)
    prediction_coverage: Annotated[float, Meta(ge=0.5, le=0.999)] = 0.95


class HttpSection(Table, frozen=True):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000


class ProxySection(Table, frozen=True):
    """The OpenAI-compatible door under /v1/ on the HTTP API's port (http/door.py)."""

    enabled: bool = False
    make_room: bool = False  # a cold model may unload lower priorities to fit (as `load --make-room`)
    queue: Annotated[int, Meta(ge=0, le=100_000)] = 16  # requests waiting for cold models; beyond: 503
    idle_ttl_s: NonNegSeconds = 300.0  # the default of components that serve models (Ollama's keep_alive)
    max_body_mb: Annotated[float, Meta(gt=0, le=1024)] = 16.0  # a request body larger is refused (413)
    read_timeout_s: Seconds = 600.0  # an upstream silent this long (no byte) ends the request (504)


class ConfigFile(Table, frozen=True):
    supervisor: SupervisorSection = SupervisorSection()
    memory: MemorySection = MemorySection()
    http: HttpSection = HttpSection()
    proxy: ProxySection = ProxySection()
    # Decoded per component below, so that errors can name the component (msgspec writes
    # dict keys as `[...]` in its paths).
    components: dict[str, dict[str, object]] = {}


class Config(msgspec.Struct, frozen=True):
    """A checked config: component names filled in, `cwd` absolute, `order` a valid start order."""

    source: str
    base_dir: str
    supervisor: SupervisorSection
    memory: MemorySection
    http: HttpSection
    components: dict[str, ComponentSpec]
    order: list[str]
    proxy: ProxySection = ProxySection()

    def idle_ttl_s(self, spec: ComponentSpec) -> float:
        """Its own idle_ttl_s, else the door's default for a component that serves models; 0: never."""
        if spec.idle_ttl_s is not None:
            return spec.idle_ttl_s
        return self.proxy.idle_ttl_s if spec.serves else 0.0

    def component(self, name: str) -> ComponentSpec:
        return self.components[name]

    def longest_stop_grace_s(self) -> float:
        """The grace to give processes whose component is unknown (leftovers, orphans)."""
        return max((spec.stop_grace_s for spec in self.components.values()), default=5.0)


class Paths(msgspec.Struct, frozen=True):
    runtime_dir: str
    state_dir: str
    log_dir: str
    socket: str


_EXPECTED_ENUMS = {
    "priority": "one of CRITICAL, HIGH, MEDIUM, LOW",
    "restart": "one of never, on-failure, always",
}


def load_config(path: str | Path) -> Config:
    """Read, decode and check one config file. Raises ConfigError."""
    file = str(path)
    try:
        raw = Path(file).read_bytes()
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read the file: {exc.strerror or exc}") from None
    return parse_config(raw, file)


def parse_config(raw: bytes | str, file: str) -> Config:
    try:
        decoded = msgspec.toml.decode(raw, type=ConfigFile)
    except msgspec.ValidationError as exc:
        raise _validation_error(file, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(file, "", f"not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(file, "", "not valid TOML: arrays or tables nested too deeply") from None
    base_dir = Path(file).resolve().parent
    components = {
        name: check_component(file, base_dir, name, decode_component(file, name, table))
        for name, table in decoded.components.items()
    }
    _check_memory(file, decoded.memory)
    if decoded.http.host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(file, "$.http.host", "a loopback address (127.0.0.1, ::1 or localhost)")
    if decoded.proxy.enabled and not decoded.http.enabled:  # else the door would be silently absent
        raise ConfigError(file, "$.proxy.enabled", "false while [http] enabled = false (the door is on the API's port)")
    order = start_order(file, components)
    _check_models(file, components)
    return Config(
        source=str(Path(file).resolve()),
        base_dir=str(base_dir),
        supervisor=decoded.supervisor,
        memory=decoded.memory,
        http=decoded.http,
        components=components,
        order=order,
        proxy=decoded.proxy,
    )


def decode_component(file: str, name: str, table: dict[str, object]) -> ComponentSpec:
    try:
        return msgspec.convert(table, ComponentSpec)
    except msgspec.ValidationError as exc:
        profiles = table.get("profiles")
        if "profiles[...]" in str(exc) and isinstance(profiles, dict):  # name the profile, as msgspec does not
            for profile, body in profiles.items():
                try:
                    msgspec.convert(body, ProfileSpec)
                except msgspec.ValidationError as inner:
                    where = f"$.components.{name}.profiles.{profile}"
                    raise _validation_error(file, str(inner), prefix=where) from None
        raise _validation_error(file, str(exc), prefix=f"$.components.{name}") from None


def _validation_error(file: str, message: str, prefix: str = "$") -> ConfigError:
    # msgspec says e.g. "Expected `int`, got `str` - at `$.components.nlp.estimated_mb`",
    # and leaves out the " - at" part when the error is at the root of what it decoded.
    text, sep, where = message.rpartition(" - at `")
    if not sep:
        text, where = message, "$`"
    path = prefix + where.rstrip("`").removeprefix("$")
    last = path.rsplit(".", 1)[-1]
    if text.startswith("Invalid enum value") and last in _EXPECTED_ENUMS:
        text = f"{_EXPECTED_ENUMS[last]}, got {text.removeprefix('Invalid enum value ')}"
    elif text.startswith("Object contains unknown field"):
        text = (
            "a known key, got " + text.replace("Object contains unknown field", "unknown key") + " (check its spelling)"
        )
    return ConfigError(file, path, text[:1].lower() + text[1:])


def check_component(file: str, base_dir: Path, name: str, spec: ComponentSpec) -> ComponentSpec:
    at = f"$.components.{name}"
    if not NAME_PATTERN.match(name):
        raise ConfigError(file, at, "a component name of letters, digits, '_', '.', '-' (at most 64)")
    if spec.name is not None and spec.name != name:
        raise ConfigError(file, f"{at}.name", f"the table's own key {name!r}, got {spec.name!r}")
    if not spec.command[0]:
        raise ConfigError(file, f"{at}.command[0]", "a program name, got an empty string")
    if spec.stop_signal not in SIGNAL_NAMES:
        raise ConfigError(file, f"{at}.stop_signal", f"a signal name, one of {', '.join(sorted(SIGNAL_NAMES))}")
    trim = probespec.check_trim(file, at, spec.trim, spec.trim_signal, spec.stop_signal, TRIM_SIGNAL_NAMES)
    spec = msgspec.structs.replace(spec, trim=trim, trim_signal=trim.signal if trim is not None else None)
    _check_process_strings(file, at, spec)
    _check_profiles(file, at, spec)
    if spec.backoff_max_s < spec.backoff_initial_s:
        raise ConfigError(file, f"{at}.backoff_max_s", "a value at least backoff_initial_s")
    ready = spec.ready
    ways = [w for w in (ready.alive_s, ready.log_pattern, ready.port, ready.http) if w is not None]
    if len(ways) > 1:
        raise ConfigError(file, f"{at}.ready", "at most one of alive_s, log_pattern, port, http")
    texts = probespec.table_texts(spec.ready, spec.alive, spec.trim, probespec.as_list(spec.unload), spec.proxy)
    uses_macro = probespec.mentions_port(spec.command, spec.env, texts)
    tables = (spec.ready, spec.alive, spec.trim, spec.unload)
    probespec.check_probes(file, at, tables, spec.proxy, spec.port or (1 if uses_macro else None))
    if ready.log_pattern is not None:
        try:
            re.compile(ready.log_pattern)
        except re.error as exc:
            raise ConfigError(file, f"{at}.ready.log_pattern", f"a regular expression ({exc})") from None
    for i, dep in enumerate(spec.after):
        if dep == name:
            raise ConfigError(file, f"{at}.after[{i}]", "another component's name, got the component itself")
    cwd = (base_dir / spec.cwd if spec.cwd else base_dir).resolve()
    if not cwd.is_dir():
        raise ConfigError(
            file,
            f"{at}.cwd",
            f"an existing directory, got {str(cwd)!r} ({'not a directory' if cwd.exists() else 'no such directory'})",
        )
    return msgspec.structs.replace(spec, name=name, cwd=str(cwd))


def _check_profiles(file: str, at: str, spec: ComponentSpec) -> None:
    for profile, table in spec.profiles.items():
        if not NAME_PATTERN.match(profile):
            expected = f"profile names of letters, digits, '_', '.', '-'; got {profile!r}"
            raise ConfigError(file, f"{at}.profiles", expected)
        own = {"command": table.command or spec.command, "env": table.env, "inputs": table.inputs or []}
        _check_process_strings(file, f"{at}.profiles.{profile}", msgspec.structs.replace(spec, **own))


def _check_process_strings(file: str, at: str, spec: ComponentSpec) -> None:
    """What the OS cannot pass to a new process is refused here, not by a traceback at spawn:
    a NUL in any argument, variable or path, and `=` or nothing as a variable's name."""
    fields = [(f"{at}.command[{i}]", word) for i, word in enumerate(spec.command)]
    fields += [(f"{at}.cwd", spec.cwd or "")] + [(f"{at}.inputs[{i}]", p) for i, p in enumerate(spec.inputs)]
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key:
            raise ConfigError(file, f"{at}.env", f"variable names without '=' or NUL, got {key!r}")
        fields.append((f"{at}.env.{key}", value))
    for path, text in fields:
        if "\0" in text:
            raise ConfigError(file, path, "text without a NUL character")


def _check_memory(file: str, memory: MemorySection) -> None:
    levels = (memory.warning_percent, memory.critical_percent, memory.emergency_percent)
    if not levels[0] < levels[1] < levels[2]:
        raise ConfigError(
            file,
            "$.memory",
            "warning_percent < critical_percent < emergency_percent, got " + " / ".join(map(str, levels)),
        )
    warn, crit = memory.swap_out_warning_mb_s, memory.swap_out_critical_mb_s
    if warn and crit and crit < warn:
        raise ConfigError(
            file, "$.memory.swap_out_critical_mb_s", f"a rate at least swap_out_warning_mb_s ({warn:g}), got {crit:g}"
        )


def _check_models(file: str, components: Mapping[str, ComponentSpec]) -> None:
    """Each served model name belongs to one component, which must say where its API is."""
    owner: dict[str, str] = {}
    for name, spec in components.items():
        for i, model in enumerate(spec.serves):
            if not model or model in owner:
                taken = f"a model no other component serves, {model!r} is {owner.get(model)}'s"
                raise ConfigError(file, f"$.components.{name}.serves[{i}]", taken if model else "a model name")
            owner[model] = name
        macro = probespec.mentions_port(spec.command, spec.env, [spec.proxy or ""])
        if spec.serves and spec.proxy is None and spec.port is None and not macro:
            raise ConfigError(
                file, f"$.components.{name}.proxy", "its API's URL (proxy, or port, or ${PORT} in its command)"
            )


def start_order(file: str, components: Mapping[str, ComponentSpec]) -> list[str]:
    """A topological order over `after` (Kahn's algorithm, ties by config order)."""
    for name, spec in components.items():
        for i, dep in enumerate(spec.after):
            if dep not in components:
                raise ConfigError(file, f"$.components.{name}.after[{i}]", f"a component name, got unknown {dep!r}")
    remaining = {name: set(spec.after) for name, spec in components.items()}
    order: list[str] = []
    while remaining:
        ready = [name for name, deps in remaining.items() if not deps]
        if not ready:
            cycle = " -> ".join(sorted(remaining))
            raise ConfigError(
                file, f"$.components.{sorted(remaining)[0]}.after", f"no cycle in 'after', got one among {cycle}"
            )
        for name in ready:
            order.append(name)
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    return order


def resolve_paths(config: Config, environ: Mapping[str, str], uid: int, home: str) -> Paths:
    """Where the supervisor keeps its socket, state and logs.

    The environment wins over the file so that tests and side-by-side stacks can move a
    whole stack with one variable: IRONCLIW_RUNTIME_DIR, IRONCLIW_STATE_DIR, IRONCLIW_LOG_DIR,
    IRONCLIW_SOCKET.
    """
    section, base = config.supervisor, config.base_dir
    runtime_dir = pick(environ, "IRONCLIW_RUNTIME_DIR", section.runtime_dir, base, default_runtime_dir(environ, uid))
    xdg_state = environ.get("XDG_STATE_HOME") or f"{home}/.local/state"
    state_dir = pick(environ, "IRONCLIW_STATE_DIR", section.state_dir, base, posixpath.join(xdg_state, "ironcliw"))
    log_dir = pick(environ, "IRONCLIW_LOG_DIR", section.log_dir, base, posixpath.join(state_dir, "logs"))
    socket = socket_path(environ, base, runtime_dir, section.socket)
    return Paths(runtime_dir=runtime_dir, state_dir=state_dir, log_dir=log_dir, socket=socket)
