"""Where a Flink job's CPU goes, from a JFR recording of its JVM (``bench/join.py --profile``).

Each execution sample (a running Java thread's stack, every 10 ms with JFR's ``profile``
settings) is put in the bucket of the innermost frame that names a part of the job: our
parse or join functions, the process-table-function framework, keyed state, timers, the
network stack (serialization in, out), Kafka source and sinks, the built-in operators, JSON
and regex work of the old SQL, checkpoints. Samples with none of these frames are ``other``.

    python bench/profile.py RECORDING.jfr [EVENTS]     # shares, and us/event given EVENTS

CPU of threads that JFR does not sample as Java code (GC, JIT compiler) is not in the shares.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

_F = "org.apache.flink."
_T = "org.apache.flink.table.runtime."

#: (bucket, frame prefixes): the first bucket whose prefix matches the innermost matching frame
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("parse (Java functions)", ("io.fluxrec.flink.EventParser", "io.fluxrec.flink.ParseEvent")),
    ("join function (SampleJoin)", ("io.fluxrec.flink.SampleJoin", "io.fluxrec.flink.JsonOut")),
    ("action dedup function", ("io.fluxrec.flink.DedupActions",)),
    ("metric records", ("io.fluxrec.flink.MetricRecord",)),
    ("timers", (_F + "streaming.api.operators.InternalTimer",
                _F + "runtime.state.heap.HeapPriorityQueue",
                _T + "operators.process.WritableInternalTimeContext")),
    ("keyed state", (_F + "runtime.state.heap.", _F + "runtime.state.ttl.")),
    ("PTF framework (state conversion)", (_T + "generated.ProcessTableRunner",
                                          _T + "operators.process.", "ProcessTableRunner")),
    ("JSON functions (old SQL)", (_T + "functions.SqlJsonUtils", _T + "functions.JsonPathCache",
                                  _F + "shaded.jackson2.", "com.jayway.jsonpath.",
                                  _F + "table.shaded.com.jayway")),
    ("regex (old SQL)", ("java.util.regex.",)),
    ("interval join", (_T + "operators.join.interval.",)),
    ("deduplicate (built-in)", (_T + "operators.deduplicate.",)),
    ("bot count (OVER)", (_T + "operators.over.",)),
    ("metrics aggregation", (_T + "operators.aggregate.", _T + "operators.bundle.")),
    ("Kafka sinks", (_F + "connector.kafka.sink.", "org.apache.kafka.clients.producer.",
                     _F + "streaming.api.functions.sink.v2.DiscardingSink")),
    ("Kafka source", (_F + "connector.kafka.source.", "org.apache.kafka.clients.consumer.",
                      "org.apache.kafka.common.")),
    ("datagen source", (_F + "connector.datagen.", _T + "functions.SqlDateTimeUtils")),
    ("network: serialize", (_F + "runtime.io.network.api.writer.",
                            _F + "runtime.io.network.api.serialization.DataOutputSerializer")),
    ("network: deserialize", (_F + "runtime.io.network.api.serialization.",
                              _F + "streaming.runtime.io.", _F + "runtime.io.network.")),
    ("row (de)serializers", (_T + "typeutils.", _F + "table.data.writer.")),
    ("SQL Calc, projections (generated)", ("StreamExecCalc", _F + "table.data.",
                                           "StreamExecWatermarkAssigner", "WatermarkGenerator")),
    ("checkpoints", (_F + "runtime.checkpoint.", _F + "runtime.state.")),
]  # fmt: skip

_FRAME = re.compile(r"^\s+([\w.$<>]+)\(")


def _bucket(stack: list[str]) -> str:
    """``stack`` from the leaf up."""
    for frame in stack:
        for name, prefixes in BUCKETS:
            if any(frame.startswith(p) or p in frame for p in prefixes):
                return name
    return "other"


def samples(jfr: Path) -> Counter[str]:
    """Execution samples per bucket."""
    text = subprocess.run(
        ["jfr", "print", "--events", "jdk.ExecutionSample", "--stack-depth", "64", str(jfr)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    out: Counter[str] = Counter()
    stack: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.strip().startswith("stackTrace = ["):
            inside, stack = True, []
        elif inside and line.strip() == "]":
            inside = False
            out[_bucket(stack)] += 1
        elif inside and (m := _FRAME.match(line)):
            stack.append(m.group(1))
    return out


def summarize(jfr: Path, events: int | None = None, period_ms: float = 10.0) -> str:
    """A table of the buckets: share of samples, and CPU us per event (``events`` given)."""
    counts = samples(jfr)
    total = sum(counts.values()) or 1
    lines = [f"{'where':36} {'share':>7}" + ("  us/event" if events else "")]
    for name, n in counts.most_common():
        row = f"{name:36} {100 * n / total:6.1f}%"
        if events:
            row += f"  {n * period_ms * 1000 / events:8.1f}"
        lines.append(row)
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None))
