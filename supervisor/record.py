"""The runtime dir's record of every process of the stack (children.json), so that the next
`up` after a SIGKILL stops them all (runtime.stop_leftovers): each leader, every member of
its tree at the newest walk (orphans included), and the unattributed orphans.

One keeper task rewrites it, at most once per RECORD_EVERY_S and only when the set changed:
a `stop all` of N components changes state 3N times, and each rewrite is O(N).
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import structlog

from . import procs
from .logfiles import DiskProblem, disk_problem
from .model import ProcessIdentity
from .monitor import MemoryMonitor
from .runner import Runner
from .runtime import ChildRecord, RuntimeDir

log = structlog.get_logger("ironcliw.supervisor")

RECORD_EVERY_S = 0.05


class ProcessRecord:
    def __init__(
        self, runtime: RuntimeDir, runners: Mapping[str, Runner], memory: MemoryMonitor, on_problem: DiskProblem
    ) -> None:
        self.runtime = runtime
        self.runners = runners
        self.memory = memory
        self._on_problem = on_problem
        self._wanted = anyio.Event()  # the record is out of date
        self._recorded: list[ChildRecord] | None = []  # None: the file is gone, write it whatever it holds
        self._identities: dict[int, ProcessIdentity] = {}  # of the processes in the record

    def changed(self) -> None:
        """The record may be out of date (O(1): the keeper rewrites it)."""
        self._wanted.set()

    def rewrite(self) -> None:
        """The file was removed (with the runtime dir): the keeper writes it again."""
        self._recorded = None
        self._wanted.set()

    async def keep(self) -> None:
        """The one writer of the record, with every change made meanwhile (a process recorded
        that late can only be a descendant: a leader that outlives a killed supervisor gets
        its parent-death signal)."""
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            self.update()
            await anyio.sleep(RECORD_EVERY_S)

    def update(self) -> None:
        """Rewrite the record now if the set of processes changed."""
        records = []
        members, known = self.memory.members, self._identities
        for name, r in self.runners.items():
            if r.child is None or r.child.in_process:  # an object in our own process: nothing to clean up
                continue
            records.append(ChildRecord(name=name, pid=r.child.pid, create_time=r.child.identity.create_time))
            for pid in members.get(r.child.pid, ()):
                if pid != r.child.pid and (ident := known.get(pid) or procs.find_identity(pid)) is not None:
                    known[pid] = ident
                    records.append(ChildRecord(name=name, pid=pid, create_time=ident.create_time))
        for pid in self.memory.orphans.get("", ()):
            if (ident := known.get(pid) or procs.find_identity(pid)) is not None:
                known[pid] = ident
                records.append(ChildRecord(name="", pid=pid, create_time=ident.create_time))
        for pid in set(known) - {rec.pid for rec in records}:
            del known[pid]
        if records == self._recorded:
            return
        path = str(self.runtime.children_path)
        try:
            self.runtime.write_children(records)
        except OSError as exc:  # tried again at the next change; the leftovers check is best effort
            self._on_problem("runtime_dir", path, disk_problem(exc))
            return
        self._on_problem("runtime_dir", path, None)
        self._recorded = records
