"""The Flink SQL of the sample-join job, generated from :class:`JoinConfig` (plain strings).

Everything runs in the JVM (Flink SQL, no Python UDFs). With ``P`` the table prefix and one
interval join per label ``k`` (action type ``A_k``, window ``W_k``, late horizon ``H``)::

    P_imp_raw ─► P_imp_checked ─(content, future)─────────────────────► dead letters
    P_act_raw ─► P_act_checked ─(content, future)─────────────────────► dead letters
       valid ──► P_unique: first arrival per (stream, request_id, item_id, action),
                 route too_late (at or behind the watermark) ─────────► dead letters
                   ├─► P_imp_unique
                   └─► P_act_unique ─► P_act_scored (the user's actions in the bot window)
                                         ├─► bot ──────────────────────► dead letters
                                         └─► P_act_ok
    P_act_ok[A_k] ⟕ P_imp_unique, t_imp in [t_act - W_k - H, t_act]    = P_match_k
          outcome labelled | late | orphan ─► corrections (samples), dead letters
    P_imp_unique ⟕ P_act_ok[A_1] ⟕ ... ⟕ P_act_ok[A_n]                   = P_final
          t_act in [t_imp, t_imp + W_k]   ─► samples (strategy window)
    P_imp_unique ─► samples with all labels 0 (strategy fake_negative)
    every stage ─► P_counts ─► metrics: running totals per (event-time window, stream,
                                        kind, reason), an upsert changelog

The contracts and the semantics are in ``CONTRACTS.md``; the executable reference of the
same semantics is :mod:`sample_join.reference`. Outputs are rows ``(k STRING, v STRING)``:
Kafka key and JSON value.

Two properties of the generated SQL matter for correctness:

* No operator ever sees a row behind its watermark: ``P_unique`` dead-letters every event
  at or behind its own watermark, the minimum over both sources (``too_late``), and every
  stateful operator downstream holds a watermark no higher; so the OVER aggregation and
  the interval joins never drop a row as late, even when an idle source resumes.
* Every decision is made once: the route of ``P_unique``, the outcome of each match join and
  the emission of ``P_final`` are wrapped in :func:`barrier`, so the optimizer can push
  neither a consumer's filter (turning a LEFT join into an INNER one) nor its narrower
  projection below them; all consumers share one operator, as the plan test checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from sample_join.settings import JoinConfig, LabelSpec, check_join_config

__all__ = ["JoinSql", "barrier", "interval"]

_INT = r"^\[-?[0-9]+\]$"
_STR = r'^\["'
_NUM = r"^\[(-?[0-9][0-9.eE+-]*)\]$"
_OBJ = r"^\[\{"
_HEAD_KEYS = {
    "impression": ("v", "request_id", "item_id", "user_id", "event_time_ms", "p_click"),
    "action": ("v", "request_id", "item_id", "user_id", "action", "event_time_ms"),
}
_UNIQUE_COLUMNS = (
    "ev_stream", "request_id", "item_id", "user_id", "action", "payload", "event_time_ms",
    "fq", "p_click",
)  # fmt: skip
_MATCH_COLUMNS = (
    "a.request_id", "a.item_id", "a.event_time_ms", "a.payload",
    "i.user_id", "i.event_time_ms", "i.features", "i.p_click",
)  # fmt: skip


def interval(ms: int) -> str:
    """A SQL interval literal for ``ms`` milliseconds (< 100 days).

    ``interval(300_500)`` is ``INTERVAL '0 00:05:00.500' DAY TO SECOND(3)``.
    """
    sec, milli = divmod(ms, 1000)
    mins, s = divmod(sec, 60)
    hours, m = divmod(mins, 60)
    d, h = divmod(hours, 24)
    return f"INTERVAL '{d} {h:02d}:{m:02d}:{s:02d}.{milli:03d}' DAY TO SECOND(3)"


def barrier(expr: str, *keep: str) -> str:
    """The STRING ``expr`` behind an optimizer barrier: a non-deterministic CASE that always
    yields ``expr``. A filter on the column is not pushed below the projection computing
    it, and the never-taken ELSE names every column in ``keep``, so no consumer's narrower
    projection is pushed below it either: all consumers share the operator underneath."""
    other = " || ".join(f"CAST({c} AS STRING)" for c in keep) or "CAST(NULL AS STRING)"
    return f"CASE WHEN RAND() < 2 THEN {expr} ELSE {other} END"


def _q(field: str) -> str:
    """The value of ``field`` in the small ``h`` as a JSON array (``["..."]``, ``[12]``...),
    NULL when absent or null."""
    return f"JSON_QUERY(h, 'lax $.{field}' WITH WRAPPER NULL ON ERROR)"


def _int64(field: str) -> str:
    """``field`` of ``h`` is a JSON integer that fits in BIGINT."""
    cast = f"TRY_CAST(JSON_VALUE(h, '$.{field}') AS BIGINT)"
    return f"(REGEXP({_q(field)}, '{_INT}') AND {cast} IS NOT NULL)"


_H_TIME = "TRY_CAST(JSON_VALUE(h, '$.event_time_ms') AS BIGINT)"
_H_EVENT_TIME = f"CASE WHEN REGEXP({_q('event_time_ms')}, '{_INT}') THEN {_H_TIME} END"


def _json_str(expr: str) -> str:
    return f"JSON_STRING({expr})"


def event_time_ms_sql(max_future_skew_ms: int) -> str:
    """``event_time_ms`` of a raw payload for the rowtime column: 0 when it does not parse
    or lies beyond the future-skew limit (so that such events cannot move the watermark)."""
    t = "TRY_CAST(JSON_VALUE(payload, '$.event_time_ms' NULL ON ERROR) AS BIGINT)"
    return (
        f"CASE WHEN {t} > UNIX_TIMESTAMP() * 1000 + {max_future_skew_ms} THEN 0 "
        f"ELSE COALESCE({t}, 0) END"
    )


@dataclass(frozen=True)
class _Rows:
    """Some rows of a view: ``FROM src [WHERE where]``; ``stream`` is a SQL expression for
    their stream, ``t`` the column with their event time."""

    src: str
    where: str
    stream: str = "'action'"
    t: str = "event_time_ms"

    def sql(self, alias: str = "") -> str:
        return f"{self.src} {alias}".rstrip() + (f" WHERE {self.where}" if self.where else "")


@dataclass(frozen=True)
class JoinSql:
    """The statements of one job. ``views()`` first, then the three ``*_select()`` queries
    feed the samples, dead-letter and metrics sinks (all rows ``(k, v)``)."""

    cfg: JoinConfig
    prefix: str = "fj"

    def __post_init__(self) -> None:
        check_join_config(self.cfg)

    # ------------------------------------------------------------------ helpers

    def _v(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    @property
    def _bots(self) -> bool:
        return self.cfg.bot_max_actions > 0

    # ------------------------------------------------------------------ views

    def views(self) -> list[str]:
        """``CREATE TEMPORARY VIEW`` statements, in dependency order."""
        out = [self._head("impression"), self._head("action")]
        out += [self._checked("impression"), self._checked("action"), self._unique()]
        out += [self._unique_of("impression"), self._unique_of("action"), self._scored()]
        out += [self._match(n, spec) for n, spec in enumerate(self.cfg.labels)]
        if self.cfg.strategy == "window":
            out.append(self._final())
        out.append(self._counts())
        return out

    def _head(self, stream: str) -> str:
        """``P_imp_head`` / ``P_act_head``: every raw event with ``h``, the compact JSON of
        just its scalar fields (NULL unless the payload is a JSON object), and for impressions
        ``fq``, its features wrapped in an array (``[{...}]``; NULL when absent). These
        are the only parses of the whole payload; everything else reads the small ``h``."""
        keys = ",".join(f"''{k}''" for k in _HEAD_KEYS[stream])
        fq = (
            ", JSON_QUERY(payload, 'lax $.features' WITH WRAPPER NULL ON ERROR) AS fq"
            if stream == "impression"
            else ""
        )
        short = "imp" if stream == "impression" else "act"
        return f"""
CREATE TEMPORARY VIEW {self._v(short + "_head")} AS
SELECT payload, et, pt, JSON_QUERY(payload, 'lax $[{keys}]' NULL ON ERROR) AS h{fq}
FROM {self._v(short + "_raw")}
"""

    def _checked(self, stream: str) -> str:
        """Every raw event, its parsed fields and ``reason`` (NULL = valid so far): content
        checks and the future-skew check, evaluated where the event is read."""
        cfg = self.cfg
        short = "imp" if stream == "impression" else "act"
        strings = ["request_id", "item_id", "user_id"]
        required = ["v", *strings, "event_time_ms"]
        if stream == "impression":
            absent = " OR fq IS NULL"
            extra_type = f" OR NOT REGEXP(fq, '{_OBJ}')"
            unknown = ""
            action = "CAST('' AS STRING) AS action"
        else:
            strings.append("action")
            required.append("action")
            absent = extra_type = ""
            actions = ", ".join(f"'{s.action}'" for s in cfg.labels)
            unknown = (
                f"      WHEN JSON_VALUE(h, '$.action') NOT IN ({actions}) THEN 'unknown_action'\n"
            )
            action = "JSON_VALUE(h, '$.action') AS action"
        missing = " OR ".join(f"{_q(f)} IS NULL" for f in required) + absent
        bad = " OR ".join(f"NOT REGEXP({_q(f)}, '{_STR}')" for f in strings)
        bad += f" OR NOT {_int64('event_time_ms')} OR NOT {_int64('v')}{extra_type}"
        cols = ", ".join(f"JSON_VALUE(h, '$.{f}') AS {f}" for f in strings[:3])
        t = _H_TIME
        skew = interval(cfg.max_future_skew_ms)
        if stream == "impression":
            p_click = f"REGEXP_EXTRACT({_q('p_click')}, '{_NUM}', 1)"
            features = f", fq, {p_click} AS p_click"
        else:
            features = ", CAST(NULL AS STRING) AS fq, CAST(NULL AS STRING) AS p_click"
        return f"""
CREATE TEMPORARY VIEW {self._v(short + "_checked")} AS
SELECT '{stream}' AS ev_stream, payload, et, pt, {cols}, {action}{features},
  {_H_EVENT_TIME} AS event_time_ms,
  CASE
      WHEN h IS NULL THEN 'malformed_json'
      WHEN {missing} THEN 'missing_field'
      WHEN {bad} THEN 'bad_type'
      WHEN TRY_CAST(JSON_VALUE(h, '$.v') AS BIGINT) <> 1 THEN 'unsupported_version'
{unknown}      WHEN TO_TIMESTAMP_LTZ({t}, 3) > CURRENT_TIMESTAMP + {skew} THEN 'future_event'
      ELSE CAST(NULL AS STRING)
  END AS reason
FROM {self._v(short + "_head")}
"""

    def _unique(self) -> str:
        """``P_unique``: the first arrival of every valid event, impressions and actions in
        one Deduplicate operator, so that its watermark is the minimum over both sources.
        ``route`` is ``too_late`` when the event is at or behind that watermark, else its
        stream: no operator downstream can then hold a higher watermark than the event."""
        valid = " UNION ALL ".join(
            f"SELECT * FROM {self._v(short + '_checked')} WHERE reason IS NULL"
            for short in ("imp", "act")
        )
        # one Deduplicate (and one watermark) for all consumers: never copies that could
        # route the same event differently
        route = barrier(
            "CASE WHEN et <= CURRENT_WATERMARK(et) THEN 'too_late' ELSE ev_stream END",
            *_UNIQUE_COLUMNS,
        )
        return f"""
CREATE TEMPORARY VIEW {self._v("unique")} AS
SELECT *, {route} AS route FROM (
  SELECT *, ROW_NUMBER() OVER (
    PARTITION BY ev_stream, request_id, item_id, action ORDER BY pt ASC) AS rn
  FROM ({valid})
) WHERE rn = 1
"""

    def _unique_of(self, stream: str) -> str:
        """Accepted unique events of one stream; impressions also get ``features``/``p_click``."""
        short = "imp" if stream == "impression" else "act"
        extra = ""
        if stream == "impression":  # fq is "[{...}]": the object inside the array
            extra = ", SUBSTRING(fq FROM 2 FOR CHAR_LENGTH(fq) - 2) AS features, p_click"
        return f"""
CREATE TEMPORARY VIEW {self._v(short + "_unique")} AS
SELECT payload, et, request_id, item_id, user_id, action, event_time_ms{extra}
FROM {self._v("unique")} WHERE route = '{stream}'
"""

    def _scored(self) -> str:
        """Unique actions with ``user_actions``: the user's actions in ``[t - bot_window, t]``."""
        src = self._v("act_unique")
        if not self._bots:
            body = f"SELECT *, CAST(0 AS BIGINT) AS user_actions FROM {src}"
        else:
            body = (
                f"SELECT *, COUNT(*) OVER (PARTITION BY user_id ORDER BY et RANGE BETWEEN "
                f"{interval(self.cfg.bot_window_ms)} PRECEDING AND CURRENT ROW) AS user_actions "
                f"FROM {src}"
            )
        return f"CREATE TEMPORARY VIEW {self._v('act_scored')} AS {body}"

    def _ok(self, spec: LabelSpec) -> str:
        return (
            f"(SELECT * FROM {self._v('act_scored')} WHERE user_actions <= "
            f"{self.cfg.bot_max_actions if self._bots else 0} AND action = '{spec.action}')"
        )

    def _match(self, n: int, spec: LabelSpec) -> str:
        """``P_match_n``: every non-bot action of label ``n`` with its impression (if any)."""
        reach = spec.window_ms + self.cfg.late_horizon_ms
        outcome = (
            "CASE WHEN i.request_id IS NULL THEN 'orphan' "
            f"WHEN a.event_time_ms <= i.event_time_ms + {spec.window_ms} THEN 'labelled' "
            "ELSE 'late' END"
        )
        return f"""
CREATE TEMPORARY VIEW {self._v(f"match_{n}")} AS
SELECT a.request_id, a.item_id, a.event_time_ms AS act_time_ms, a.payload AS act_payload,
  i.user_id, i.event_time_ms, i.features, i.p_click,
  {barrier(outcome, *_MATCH_COLUMNS)} AS outcome
FROM {self._ok(spec)} a
LEFT JOIN {self._v("imp_unique")} i
  ON i.request_id = a.request_id AND i.item_id = a.item_id
  AND i.et BETWEEN a.et - {interval(reach)} AND a.et
"""

    def _final(self) -> str:
        """``P_final``: each unique impression with the time of each label's action (or NULL)."""
        joins, times = [], []
        for n, spec in enumerate(self.cfg.labels):
            a = f"a{n}"
            joins.append(
                f"LEFT JOIN {self._ok(spec)} {a}\n"
                f"  ON {a}.request_id = i.request_id AND {a}.item_id = i.item_id"
                f" AND {a}.et BETWEEN i.et AND i.et + {interval(spec.window_ms)}"
            )
            times.append(f"{a}.event_time_ms AS t{n}")
        cols = ["i.request_id", "i.item_id", "i.user_id", "i.event_time_ms", "i.features"]
        cols += ["i.p_click", *(f"a{n}.event_time_ms" for n in range(len(self.cfg.labels)))]
        return f"""
CREATE TEMPORARY VIEW {self._v("final")} AS
SELECT i.request_id, i.item_id, i.user_id, i.event_time_ms, i.features, i.p_click,
  {", ".join(times)}, {barrier("'sample'", *cols)} AS emit
FROM {self._v("imp_unique")} i
{chr(10).join(joins)}
"""

    # ------------------------------------------------------------------ records

    def _sample_json(self, labels: list[str], times: list[str], correction: str, sid: str) -> str:
        """The Sample v1 JSON (CONTRACTS.md section 2) of row ``s`` with the given SQL parts."""
        names = [spec.name for spec in self.cfg.labels]
        label_json = " || ',' || ".join(
            f"'\"{n}\":' || {expr}" for n, expr in zip(names, labels, strict=True)
        )
        time_json = " || ',' || ".join(
            f"'\"{n}\":' || {expr}" for n, expr in zip(names, times, strict=True)
        )
        return (
            f"""'{{"v":1,"sample_id":' || {_json_str(sid)}"""
            f"""\n  || ',"request_id":' || {_json_str("s.request_id")}"""
            f"""\n  || ',"item_id":' || {_json_str("s.item_id")}"""
            f"""\n  || ',"user_id":' || {_json_str("s.user_id")}"""
            """\n  || ',"event_time_ms":' || CAST(s.event_time_ms AS STRING)"""
            """\n  || ',"features":' || s.features"""
            f"""\n  || ',"labels":{{' || {label_json} || '}}'"""
            f"""\n  || ',"label_time_ms":{{' || {time_json} || '}}'"""
            f"""\n  || ',"strategy":"{self.cfg.strategy}","correction":{correction}'"""
            """\n  || COALESCE(',"p_click":' || s.p_click, '')"""
            "\n  || '}'"
        )

    def samples_select(self) -> str:
        """Rows ``(k, v)`` for the samples topic: per-impression samples and corrections."""
        base_id = "s.request_id || '|' || s.item_id || '|0'"
        n_labels = len(self.cfg.labels)
        parts = []
        if self.cfg.strategy == "window":
            labels = [f"CASE WHEN s.t{n} IS NULL THEN '0' ELSE '1' END" for n in range(n_labels)]
            times = [f"COALESCE(CAST(s.t{n} AS STRING), 'null')" for n in range(n_labels)]
            src = _Rows(self._v("final"), "s.emit = 'sample'")
        else:
            labels, times = ["'0'"] * n_labels, ["'null'"] * n_labels
            src = _Rows(self._v("imp_unique"), "")
        json = self._sample_json(labels, times, "false", base_id)
        parts.append(f"SELECT {base_id} AS k, {json} AS v FROM {src.sql('s')}")
        corrected = ["labelled"] * (self.cfg.strategy == "fake_negative")
        corrected += ["late"] * (self.cfg.late_action_policy == "correction")
        for n, spec in enumerate(self.cfg.labels):
            if not corrected:
                break
            sid = f"{base_id} || '|{spec.name}'"
            labels = ["'1'" if m == n else "'0'" for m in range(n_labels)]
            times = [
                "CAST(s.act_time_ms AS STRING)" if m == n else "'null'" for m in range(n_labels)
            ]
            json = self._sample_json(labels, times, "true", sid)
            parts.append(
                f"SELECT {sid} AS k, {json} AS v FROM {self._outcome(n, *corrected).sql('s')}"
            )
        return "\nUNION ALL\n".join(parts)

    def _dead_letters(self) -> list[tuple[_Rows, str, str, str]]:
        """Every way to the dead-letter topic: (rows, reason expression, stage, payload)."""
        out = [
            (_Rows(self._v(f"{short}_checked"), "reason IS NOT NULL", f"'{stream}'"), "reason",
             "validate", "payload")
            for stream, short in (("impression", "imp"), ("action", "act"))
        ]  # fmt: skip
        late = _Rows(self._v("unique"), "route = 'too_late'", "ev_stream")
        out.append((late, "'too_late'", "validate", "payload"))
        if self._bots:
            where = f"user_actions > {self.cfg.bot_max_actions}"
            out.append((_Rows(self._v("act_scored"), where), "'bot'", "abnormal", "payload"))
        for n in range(len(self.cfg.labels)):
            out.append((self._outcome(n, "orphan"), "'orphan_action'", "join", "act_payload"))
            if self.cfg.late_action_policy == "dead_letter":
                out.append((self._outcome(n, "late"), "'late_action'", "join", "act_payload"))
        return out

    def _outcome(self, n: int, *outcomes: str) -> _Rows:
        quoted = ", ".join(f"'{o}'" for o in outcomes)
        where = f"outcome IN ({quoted})"
        return _Rows(self._v(f"match_{n}"), where, "'action'", "act_time_ms")

    def dead_letters_select(self) -> str:
        """Rows ``(k, v)`` for the dead-letter topic (CONTRACTS.md section 3)."""
        parts = []
        for rows, reason, stage, payload in self._dead_letters():
            v = (
                f"""'{{"v":1,"stream":"' || {rows.stream} || '","reason":"' || {reason}"""
                f"""\n  || '","stage":"{stage}","payload":' || JSON_STRING({payload}) || '}}'"""
            )
            parts.append(f"SELECT CAST(NULL AS STRING) AS k, {v} AS v FROM {rows.sql()}")
        return "\nUNION ALL\n".join(parts)

    def _count(
        self, rows: _Rows, kind: str, reason: str = "CAST(NULL AS STRING)", n: int = 1
    ) -> str:
        """One row per row of ``rows``: metric key ``k``, its JSON ``head`` and ``n``."""
        w = self.cfg.metrics_window_ms
        start = f"(COALESCE({rows.t}, 0) / {w}) * {w}"
        k = (
            f"CAST({start} AS STRING) || '|' || {rows.stream} || '|{kind}|' "
            f"|| COALESCE({reason}, '')"
        )
        head = (
            f"""'{{"v":1,"window_start_ms":' || CAST({start} AS STRING)"""
            f""" || ',"window_end_ms":' || CAST({start} + {w} AS STRING)"""
            f""" || ',"stream":"' || {rows.stream} || '","kind":"{kind}","reason":'"""
            f""" || COALESCE('"' || {reason} || '"', 'null')"""
        )
        return f"SELECT {k} AS k, {head} AS head, {n} AS n FROM {rows.sql()}"

    def _counts(self) -> str:
        """``P_counts``: one row per counted fact (the metrics of CONTRACTS.md section 5)."""
        cfg = self.cfg
        rows = []
        for stream, short in (("impression", "imp"), ("action", "act")):
            checked = self._v(f"{short}_checked")
            head = _Rows(self._v(f"{short}_head"), "", f"'{stream}'", _H_EVENT_TIME)
            rows += [
                self._count(head, "in"),
                self._count(_Rows(checked, "reason IS NULL", f"'{stream}'"), "duplicate"),
            ]
        unique = _Rows(self._v("unique"), "route IS NOT NULL", "ev_stream")
        rows.append(self._count(unique, "duplicate", n=-1))
        if cfg.strategy == "window":
            final = _Rows(self._v("final"), "emit = 'sample'", "'impression'")
        else:
            final = _Rows(self._v("imp_unique"), "", "'impression'")
        rows.append(self._count(final, "sample"))
        rows += [self._count(r, "dead_letter", reason) for r, reason, _, _ in self._dead_letters()]
        late_fix = cfg.late_action_policy == "correction"
        corrected = ["labelled"] * (cfg.strategy == "fake_negative") + ["late"] * late_fix
        for n in range(len(cfg.labels)):
            rows.append(self._count(self._outcome(n, "labelled", *["late"] * late_fix), "labelled"))
            rows.append(self._count(self._outcome(n, "late"), "late_action"))
            if corrected:
                rows.append(self._count(self._outcome(n, *corrected), "correction"))
        return f"CREATE TEMPORARY VIEW {self._v('counts')} AS\n" + "\nUNION ALL\n".join(rows)

    def metrics_select(self) -> str:
        """Rows ``(k, v)`` for the metrics topic, an upsert changelog: the newest value of a
        key is the running total of one (window, stream, kind, reason) (CONTRACTS.md 5)."""
        return f"""
SELECT k, MAX(head) || ',"count":' || CAST(SUM(n) AS STRING) || '}}' AS v
FROM {self._v("counts")}
GROUP BY k
"""
