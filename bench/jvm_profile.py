"""Where a Flink job's CPU goes (``bench/join.py --profile``).

Two views of one run of the job JVM:

* :class:`ThreadCpu` reads the CPU time of each of its threads from ``/proc`` while the job
  runs, so every microsecond is counted once, by thread kind: the operators' task threads,
  checkpoint snapshots, the changelog's uploads, Kafka clients, garbage collection, the JIT
  compiler, other.
* a JFR recording (execution samples every 10 ms) splits the task threads' share among the
  parts of the job: each sample goes to the first bucket of :data:`BUCKETS` that one of its
  frames belongs to (our parse and join functions, keyed state, timers, the network stack,
  Kafka, the built-in operators of the old SQL, generated code, ...).

    python bench/jvm_profile.py RECORDING.jfr     # the JFR shares alone
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

_F = "org.apache.flink."
_T = "org.apache.flink.table.runtime."
_H = "org.apache.flink.runtime.state.heap."
_S = "org.apache.flink.streaming.api.operators."

#: (bucket, frame prefixes or substrings): a sample goes to the bucket of its innermost frame
#: that matches one.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("job start-up (planning, codegen, jar upload)", (
        "org.apache.calcite.", _F + "table.planner.", "org.codehaus.janino.",
        "org.codehaus.commons.", "sun.security.provider.", _F + "runtime.blob.",
        "antlr")),
    ("checkpoints (sync and async snapshots)", (
        _H + "HeapSnapshotStrategy", _H + "CopyOnWriteStateMapSnapshot",
        _F + "runtime.state.FullSnapshotAsyncWriter", _F + "runtime.state.SnapshotStrategyRunner",
        _F + "runtime.state.AsyncSnapshotCallable", _F + "runtime.checkpoint.",
        _F + "streaming.runtime.tasks.SubtaskCheckpointCoordinatorImpl",
        _H + "HeapPriorityQueueSnapshot")),
    ("parse (format fluxrec-event, fluxrec_impression/action)", (
        "io.fluxrec.flink.EventParser", "io.fluxrec.flink.EventFormat",
        "io.fluxrec.flink.ParseEvent")),
    ("join function logic (SampleJoin)", ("io.fluxrec.flink.SampleJoin",
                                          "io.fluxrec.flink.JsonOut")),
    ("action dedup logic", ("io.fluxrec.flink.DedupActions",)),
    ("bot count logic", ("io.fluxrec.flink.BotCount",)),
    ("metric records", ("io.fluxrec.flink.MetricRecord",)),
    ("timers", (_S + "TimerHeapInternalTimer", _H + "HeapPriorityQueue",
                _S + "InternalTimerServiceImpl.registerEventTimeTimer",
                _S + "InternalTimerServiceImpl.deleteEventTimeTimer",
                _T + "operators.process.WritableInternalTimeContext")),
    ("keyed state: TTL checks and cleanup", (_F + "runtime.state.ttl.",)),
    ("changelog state backend (logging each state change)", (
        _F + "state.changelog.", _F + "changelog.fs.")),
    ("keyed state (heap)", (_H, _F + "runtime.state.KeyGroupRangeAssignment",
                            _S + "AbstractStreamOperator.setKeyContext",
                            _F + "runtime.state.AbstractKeyedStateBackend")),
    ("process table function framework", (_T + "generated.ProcessTableRunner", "ProcessTableRunner",
                                          _T + "operators.process.")),
    ("JSON functions (old SQL)", (_T + "functions.SqlJsonUtils", _T + "functions.JsonPathCache",
                                  "jackson", "jayway")),
    ("regex (old SQL)", ("java.util.regex.",)),
    ("interval joins (old SQL)", (_T + "operators.join.interval.",)),
    ("deduplicate (old SQL)", (_T + "operators.deduplicate.",)),
    ("OVER window (old SQL)", (_T + "operators.over.",)),
    ("metrics aggregation", (_T + "operators.aggregate.", _T + "operators.bundle.")),
    ("Kafka sinks (transactional)", (_F + "connector.kafka.sink.", "kafka.clients.producer.")),
    ("Kafka source", (_F + "connector.kafka.source.", "kafka.clients.consumer.",
                      _F + "connector.base.source.reader.")),
    ("datagen source (bench input)", (_F + "connector.datagen.", "DataGenerator",
                                      _F + "streaming.api.functions.source.datagen.")),
    ("network: serialize out", (_F + "runtime.io.network.api.writer.",
                                _F + "runtime.io.network.api.serialization.DataOutputSerializer")),
    ("network: deserialize in", (_F + "runtime.io.network.", _F + "streaming.runtime.io.")),
    ("row serializers", (_T + "typeutils.", _F + "table.data.writer.")),
    ("generated SQL code (Calc, projections, filters)", ("StreamExecCalc", "WatermarkGenerator",
                                                         "StreamExecWatermarkAssigner")),
    ("record handover between chained operators", (_F + "streaming.runtime.tasks.",
                                                   _T + "util.StreamRecordCollector")),
]  # fmt: skip

_FRAME = re.compile(r"^\s+([\w.$<>]+)\(")


def _bucket(stack: list[str]) -> str:
    """The bucket of the innermost frame that belongs to one (generic frames such as
    ``HashMap.get`` belong to none and fall through to their caller)."""
    for frame in stack:
        for name, patterns in BUCKETS:
            if any(frame.startswith(p) or p in frame for p in patterns):
                return name
    return "other Java code"


def samples(jfr: Path) -> Counter[str]:
    """Execution samples per bucket, of the threads that :class:`ThreadCpu` counts as
    ``operator tasks and other threads``."""
    text = subprocess.run(
        ["jfr", "print", "--events", "jdk.ExecutionSample", "--stack-depth", "96", str(jfr)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    out: Counter[str] = Counter()
    stack: list[str] = []
    inside = counted = False
    for line in text.splitlines():
        if line.strip().startswith("sampledThread = "):
            name = line.split('"')[1] if '"' in line else ""
            counted = _kind(name) == TASKS
        elif line.strip().startswith("stackTrace = ["):
            inside, stack = True, []
        elif inside and line.strip() == "]":
            inside = False
            if counted:
                out[_bucket(stack)] += 1
        elif inside and (m := _FRAME.match(line)):
            stack.append(m.group(1))
    return out


#: thread kinds by the start of their name (``/proc/PID/task/TID/comm``, 15 characters)
THREAD_KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("garbage collection", ("GC Thread", "G1 ", "VM Periodic", "VM Thread")),
    ("JIT compiler", ("C2 Compiler", "C1 Compiler")),
    ("checkpoint snapshots", ("AsyncOperations", "flink-operator-", "Checkpoint")),
    ("Kafka clients (I/O threads)", ("kafka-producer", "kafka-coordinat", "kafka-admin")),
    ("changelog uploads", ("ChangelogBlocki", "ChangelogRetryS")),
]


TASKS = "operator tasks and other threads"


def _kind(thread_name: str) -> str:
    return next((k for k, starts in THREAD_KINDS if thread_name.startswith(starts)), TASKS)


class ThreadCpu:
    """CPU seconds of each thread of process ``pid`` between :meth:`start` and :meth:`stop`,
    read from ``/proc`` every ``every_s`` (a thread that ends keeps its last reading)."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        self.pid = pid
        self.every_s = every_s
        self.base: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.tick = 100.0

    def _read(self) -> dict[int, tuple[str, float]]:
        out = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / self.tick)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.last.update(self._read())

    def start(self) -> None:
        import os

        self.tick = float(os.sysconf("SC_CLK_TCK"))
        self.base = {tid: cpu for tid, (_, cpu) in self._read().items()}
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """CPU seconds per thread kind (the rest: ``operator tasks and other threads``)."""
        self._stop.set()
        self._thread.join()
        self.last.update(self._read())
        out: Counter[str] = Counter()
        for tid, (name, cpu) in self.last.items():
            out[_kind(name)] += cpu - self.base.get(tid, 0.0)
        return dict(out)


def cpu_by_part(jfr: Path, threads: dict[str, float]) -> dict[str, float]:
    """CPU seconds of each part of the job in one run: the thread kinds measured by
    :class:`ThreadCpu`, the task threads split by the JFR shares of :data:`BUCKETS`."""
    counts = samples(jfr)
    total = sum(counts.values()) or 1
    out = {kind: cpu for kind, cpu in threads.items() if kind != TASKS}
    for name, n in counts.items():
        out[name] = threads.get(TASKS, 0.0) * n / total
    return out


def allocated_bytes(jfr: Path) -> int:
    """Bytes the JVM allocated during a recording: the heap's growth between collections
    (``jdk.GCHeapSummary``: used before each one minus used after the one before). Exact up
    to the last collection, so a recording should end with one (``jcmd PID GC.run``)."""
    out = subprocess.run(
        ["jfr", "print", "--json", "--events", "jdk.GCHeapSummary", str(jfr)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    events = sorted(
        (e["values"] for e in json.loads(out)["recording"]["events"]),
        key=lambda v: (v["gcId"], v["when"] != "Before GC"),
    )
    total, after = 0, None
    for v in events:
        if v["when"] == "Before GC" and after is not None:
            total += v["heapUsed"] - after
        elif v["when"] == "After GC":
            after = v["heapUsed"]
    return total


def marginal_breakdown(
    small: tuple[Path, dict[str, float]], large: tuple[Path, dict[str, float]], events: int
) -> str:
    """CPU us per event of each part: (large run - small run) / ``events`` (the extra events
    of the large run), so that start-up and shutdown cancel out as in the rates."""
    a, b = cpu_by_part(*small), cpu_by_part(*large)
    parts = {k: (b.get(k, 0.0) - a.get(k, 0.0)) / events * 1e6 for k in a.keys() | b.keys()}
    total = sum(parts.values())
    lines = [f"{'where (marginal CPU us per event)':56} {'us':>6}"]
    for name, us in sorted(parts.items(), key=lambda x: -x[1]):
        lines.append(f"{name:56} {us:6.1f}")
    lines.append(f"{'total':56} {total:6.1f}")
    return "\n".join(lines)


def summarize(jfr: Path, threads: dict[str, float], events: int) -> str:
    """A table of CPU us per event: thread kinds, and the task threads split by the JFR
    shares of :data:`BUCKETS`."""
    counts = samples(jfr)
    total = sum(counts.values()) or 1
    tasks = threads.get(TASKS, 0.0)
    lines = [f"{'where (CPU us per event)':48} {'us':>6} {'share':>6}"]
    cpu_all = sum(threads.values()) or 1.0
    for name, n in counts.most_common():
        us = tasks * n / total / events * 1e6
        lines.append(f"  {name:46} {us:6.1f} {100 * us * events / 1e6 / cpu_all:5.1f}%")
    for kind, cpu in sorted(threads.items(), key=lambda x: -x[1]):
        if kind != TASKS:
            us = cpu / events * 1e6
            lines.append(f"{kind:48} {us:6.1f} {100 * cpu / cpu_all:5.1f}%")
    lines.append(f"{'total':48} {cpu_all / events * 1e6:6.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    c = samples(Path(sys.argv[1]))
    t = sum(c.values()) or 1
    for name, n in c.most_common():
        print(f"{100 * n / t:5.1f}%  {name}")
