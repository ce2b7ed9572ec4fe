"""The collector: runs the configured sources, the ingest pipeline and rollup maintenance together.

``controlroom collect`` runs it headless; the desktop app runs the same class
on its runtime thread.  What it runs:

- every source configured in the store (``sources`` table: the sources page
  and ``config apply`` write it) and in config files (``sources:`` lists, see
  :func:`load_source_file`), each supervised: a source that fails to start
  (a port in use, a bad setting) shows as ``error`` with the reason and is
  retried, without stopping the others;
- an OTLP receiver on ``otlp`` (``HOST:PORT``) when asked, unless a
  configured OTLP source already listens there;
- a usage/cost poller per provider with an admin key (OpenAI, Anthropic),
  unless a ``usage_api`` source names that provider (explicit settings win);
- every ``compact_every_s``: :func:`storage.queries.compaction.compact_rollups`
  (the history tiers charts read), and every ``retain_every_s``:
  :func:`~storage.queries.compaction.apply_retention`;
- every ``reload_every_s``, and within ``watch_every_s`` of any control
  change (source edits are audited and bump the control version): the configs
  again; a source whose settings changed is restarted, a removed or paused one
  stopped, a new one started.

:meth:`Collector.reports` gives the sources page and the status bar what they
show per source (state, events/s, lag, last error, origin);
:func:`source_problems` checks a config field by field before it is saved.

Every source writes through one :class:`~app.sources.pipeline.Pipeline` (the
one writer).  ``start()`` and ``aclose()`` run on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.sources.base import SourceState, SourceStatus
from app.sources.pipeline import Pipeline
from storage.engine import Store
from storage.queries.compaction import (
    DEFAULT_RETENTION,
    CompactionResult,
    RetentionPolicy,
    apply_retention,
    compact_rollups,
)
from storage.queries.control import get_control_version
from storage.queries.source_configs import SOURCE_KINDS, SourceConfig, list_source_configs

log = logging.getLogger(__name__)

#: Dirty 5-minute blocks compacted per pass (a backlog is worked through in several passes).
COMPACT_MAX_BLOCKS = 288
#: Seconds after start of the first compaction pass (then every ``compact_every_s``).
FIRST_COMPACTION_S = 5.0
#: Seconds between rebuilds of today's day rows (a day's rows merge 24 hours of sketches).
TODAY_EVERY_S = 900.0
_DAY = 86_400
_RESTART_MIN_S = 1.0
_RESTART_MAX_S = 60.0
#: Seconds of ingest counts behind a source's events/s.
_RATE_WINDOW_S = 5.0


class SourceFileError(ValueError):
    """A sources file that cannot be used; the message names the file and every problem."""


def load_source_file(path: Path) -> list[SourceConfig]:
    """Source configs from a YAML or JSON file with a top-level ``sources:`` list::

        sources:
          - name: app-log
            kind: jsonl
            path: /var/log/app/llm.jsonl
            format: event            # event | otlp | litellm | openai-response | a mapping file
          - name: otlp
            kind: otlp
            listen: 127.0.0.1:4318
          - name: gateway-b
            kind: http_poll
            url: http://127.0.0.1:9100/events
            cursor_param: after
            token: keyring            # the keyring entry named like the source (or keyring:ENTRY, env:VAR)
          - name: openai-usage
            kind: usage_api
            provider: openai-main     # a provider of the store, with an admin key
            lookback_days: 7

    Each entry's keys other than ``name``, ``kind`` and ``paused`` are its settings.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise SourceFileError(
            f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}"
        ) from None
    return parse_source_list(data, where=str(path))


def parse_source_list(data: Any, *, where: str) -> list[SourceConfig]:
    if not isinstance(data, Mapping) or not isinstance(data.get("sources"), list):
        raise SourceFileError(f"{where}: expected a mapping with a 'sources:' list")
    out: list[SourceConfig] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, entry in enumerate(data["sources"]):
        label = f"sources[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{label}: expected a mapping with name and kind")
            continue
        name, kind = entry.get("name"), entry.get("kind")
        label = f"sources[{i}] ({name})" if isinstance(name, str) else label
        if not isinstance(name, str) or not isinstance(kind, str):
            problems.append(f"{label}: name and kind are required strings")
            continue
        paused = entry.get("paused", False)
        if not isinstance(paused, bool):
            problems.append(f"{label}: paused must be true or false")
            continue
        settings = {k: v for k, v in entry.items() if k not in ("name", "kind", "paused")}
        config = SourceConfig(name, kind, settings, paused)
        problems += [f"{label}: {p}" for p in config.check()]
        if name in seen:
            problems.append(f"{label}: the name {name!r} is used twice")
        seen.add(name)
        out.append(config)
    if problems:
        raise SourceFileError(f"{where}: " + "; ".join(problems))
    return out


#: What each kind's settings may hold (the sources page offers these fields).
SETTINGS_BY_KIND: dict[str, tuple[str, ...]] = {
    "jsonl": ("path", "format", "poll_interval"),
    "otlp": ("listen", "max_body_bytes"),
    "http_poll": (
        "url", "format", "cursor_param", "cursor_field", "cursor_header", "cursor_record_field",
        "records_field", "has_more_field", "initial_cursor", "params", "headers", "token", "interval_s",
        "timeout_s", "backoff_base_s", "max_backoff_s", "lag_after_s", "max_pages_per_poll",
        "max_response_bytes",
    ),
    "usage_api": (
        "provider", "admin_key", "interval_s", "lookback_days", "backfill_days", "timeout_s",
        "backoff_base_s", "max_backoff_s",
    ),
}  # fmt: skip
_USAGE_KINDS = ("openai", "anthropic")


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and bool(
        re.fullmatch(r"keyring(:[A-Za-z0-9._/-]{1,128})?|env:[A-Za-z_][A-Za-z0-9_]*|none", value)
    )


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value > 0


def _format_problem(value: Any) -> str | None:
    from app.sources.formats import FORMAT_NAMES, get_format

    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return f"a format name ({', '.join(FORMAT_NAMES)}) or a mapping file"
    try:
        get_format(os.path.expanduser(value))
    except Exception as exc:  # MappingError, a file that cannot be read
        return str(exc)
    return None


def source_problems(config: SourceConfig, providers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every problem with ``config``, keyed by the field it concerns (``""``: the whole source).

    ``providers`` maps the store's provider names to their kinds (a usage source names one).
    The sources page shows each message at its field; the checks are those the running
    source makes, so a config that passes here starts.
    """
    out: dict[str, str] = {}

    def add(key: str, message: str) -> None:
        out[key] = f"{out[key]}; {message}" if key in out else message

    for problem in config.check():
        key = "name" if problem.startswith("name ") else "kind" if problem.startswith("kind ") else ""
        if problem.startswith("settings."):
            key = problem.split(" ", 1)[0].removeprefix("settings.")
        add(key, problem)
    if "kind" in out or not isinstance(config.settings, Mapping):
        return out
    s = dict(config.settings)
    for key in sorted(set(s) - set(SETTINGS_BY_KIND[config.kind])):
        add("", f"unknown setting {key!r} for a {config.kind} source")
    if config.kind == "jsonl":
        path = s.get("path")
        if not isinstance(path, str) or not path.strip():
            add("path", "the file to follow is required, e.g. /var/log/app/llm.jsonl")
        elif not os.path.isabs(os.path.expanduser(path)):
            add(
                "path",
                "use a full path (starting with / or ~), so it does not depend on where the app started",
            )
        elif os.path.isdir(os.path.expanduser(path)):
            add("path", "this is a directory: name the JSONL file in it")
        if (bad_format := _format_problem(s.get("format"))) is not None:
            add("format", bad_format)
        if "poll_interval" in s and not _positive(s["poll_interval"]):
            add("poll_interval", "a positive number of seconds")
    elif config.kind == "otlp":
        from app.sources.otlp import parse_listen

        try:
            parse_listen(str(s.get("listen", "")) or "127.0.0.1:4318")
        except ValueError as exc:
            add("listen", str(exc))
        if "max_body_bytes" in s and (type(s["max_body_bytes"]) is not int or s["max_body_bytes"] <= 0):
            add("max_body_bytes", "a positive whole number of bytes")
    elif config.kind == "http_poll":
        from app.sources.http_poll import HttpPollConfig

        url = s.get("url")
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            add("url", "an http:// or https:// URL of the endpoint, e.g. http://127.0.0.1:9100/events")
        elif not urllib.parse.urlsplit(url).hostname:
            add("url", "the URL has no host")
        if (bad_format := _format_problem(s.get("format"))) is not None:
            add("format", bad_format)
        if "cursor_param" in s and (not isinstance(s["cursor_param"], str) or not s["cursor_param"].strip()):
            add("cursor_param", "the query parameter that carries the cursor, e.g. after")
        if "token" in s and s["token"] is not None and not _is_ref(s["token"]):
            add("token", "a reference (keyring, keyring:ENTRY, env:VAR or none), never the token itself")
        for key in ("interval_s", "timeout_s", "lag_after_s"):
            if key in s and not _positive(s[key]):
                add(key, "a positive number of seconds")
        if not out:
            try:
                HttpPollConfig.from_settings(s, where="")
            except ValueError as exc:
                add("", str(exc).removeprefix(": "))
    elif config.kind == "usage_api":
        from app.sources.usage_api import UsageApiConfig

        provider = s.get("provider")
        kind = (providers or {}).get(provider) if isinstance(provider, str) else None
        if not isinstance(provider, str) or not provider:
            add("provider", "the provider whose usage and costs to read (an OpenAI or Anthropic provider)")
        elif providers is not None and kind is None:
            add("provider", f"no provider named {provider!r}: add it on the Providers page first")
        elif providers is not None and kind not in _USAGE_KINDS:
            add("provider", f"{provider} is {kind}: usage and cost APIs exist only for OpenAI and Anthropic")
        if "admin_key" in s and not _is_ref(s["admin_key"]):
            add("admin_key", "a reference (keyring or env:VAR), never the key itself")
        if "interval_s" in s and not _positive(s["interval_s"]):
            add("interval_s", "a positive number of seconds")
        for key in ("lookback_days", "backfill_days"):
            if key in s and (type(s[key]) is not int or not 1 <= s[key] <= 400):
                add(key, "a whole number of days from 1 to 400")
        if not out:
            rest = {k: v for k, v in s.items() if k not in ("provider", "admin_key")}
            try:
                UsageApiConfig(
                    provider=str(provider),
                    kind=kind or "openai",
                    admin_key=s.get("admin_key") or "keyring",
                    **rest,
                )
            except (TypeError, ValueError) as exc:
                add("", str(exc))
    return out


@dataclass
class _Running:
    """One configured source and the task running it."""

    config: SourceConfig
    origin: str  # "store", a file path, "--otlp", "provider"
    source: Any = None
    task: asyncio.Task[None] | None = None
    error: str | None = None  # why it could not be built or started
    stopping: bool = False
    restarts: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def sample(self, now: float, ingested: int) -> float:
        """Record the ingest count at ``now`` and return events/s over the last few seconds."""
        samples = self.samples
        if samples and ingested < samples[-1][1]:  # the source restarted: its count began again
            samples.clear()
        samples.append((now, ingested))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW_S:
            samples.popleft()
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 - t0 >= 0.5 else 0.0

    def status(self) -> SourceStatus:
        if self.source is not None:
            status: SourceStatus = self.source.status()
            if self.error and status.state is not SourceState.RUNNING:
                status.state = SourceState.ERROR
                status.last_error = status.last_error or self.error
            return status
        state = SourceState.PAUSED if self.config.paused else SourceState.ERROR
        return SourceStatus(
            self.config.name, self.config.kind, state, last_error=self.error, detail=self.origin
        )


@dataclass(frozen=True, slots=True)
class SourceReport:
    """One source as the sources page and the status bar show it."""

    name: str
    kind: str
    state: SourceState
    origin: str  # "store", a config file's path, "--otlp" or "provider"
    paused: bool
    ingested: int
    duplicates: int
    rejected: int
    events_per_s: float
    lag: str  # "up to date", "1.2 MB behind", "catching up for 40 s", "" when it does not apply
    last_error: str | None
    last_event_at: float | None
    detail: str
    restarts: int
    quarantine_keys: tuple[str, ...]  # the quarantine's ``source`` values of its records

    @property
    def healthy(self) -> bool:
        """Running (or starting) without an error; a paused source is neither healthy nor failing."""
        return self.state in (SourceState.RUNNING, SourceState.STARTING) and not self.last_error


def quarantine_keys(config: SourceConfig) -> tuple[str, ...]:
    """Under which names a source's bad records are quarantined (a file source uses its path's key)."""
    if config.kind == "jsonl" and isinstance(config.settings.get("path"), str):
        from app.sources.jsonl import source_key

        return (source_key(os.path.expanduser(config.settings["path"])),)
    return (config.name,)


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _lag(entry: _Running, now: float) -> str:
    """How far behind its input a running source is, in the input's own terms."""
    src, kind = entry.source, entry.config.kind
    if src is None or entry.task is None or entry.task.done():
        return ""
    if kind == "jsonl":
        from app.sources.jsonl import file_identity

        try:
            st = os.stat(src.path)
        except OSError:
            return "waiting for the file"
        committed = getattr(src, "committed", None)
        offset = committed.offset if committed is not None and committed.identity == file_identity(st) else 0
        behind = max(0, st.st_size - offset)
        return "up to date" if behind == 0 else f"{_fmt_bytes(behind)} behind"
    detail = getattr(src, "detail", None)
    health = getattr(getattr(detail, "health", None), "value", None)
    if kind == "http_poll" and detail is not None:
        if health == "lagging" and detail.behind_since is not None:
            return f"catching up for {now - detail.behind_since:.0f} s"
        return "up to date" if health == "connected" else ""
    if kind == "usage_api" and detail is not None and detail.last_success_at is not None:
        return f"polled {max(0.0, now - detail.last_success_at) / 60:.0f} min ago"
    return ""  # OTLP is pushed to us: nothing to be behind on


@dataclass
class MaintenanceStats:
    compactions: int = 0
    last_compaction: CompactionResult | None = None
    last_compaction_error: str | None = None
    retentions: int = 0
    last_retention_error: str | None = None
    reloads: int = 0
    last_reload_error: str | None = None


class Collector:
    """Runs the configured sources into the store.  ``await start()``, then ``await aclose()``."""

    def __init__(
        self,
        store: Store,
        *,
        otlp: str | None = None,
        config_files: Sequence[Path] = (),
        pipeline: Pipeline | None = None,
        live: Any = None,
        usage_from_providers: bool = True,
        compact_every_s: float | None = 60.0,
        retain_every_s: float | None = 3600.0,
        reload_every_s: float | None = 5.0,
        watch_every_s: float | None = 0.5,
        retention: RetentionPolicy = DEFAULT_RETENTION,
    ) -> None:
        self.store = store
        self.otlp = otlp
        self.config_files = [Path(p) for p in config_files]
        self.usage_from_providers = usage_from_providers
        self.compact_every_s = compact_every_s
        self.retain_every_s = retain_every_s
        self.reload_every_s = reload_every_s
        self.watch_every_s = watch_every_s
        self.retention = retention
        self.maintenance = MaintenanceStats()
        self._pipeline = pipeline
        self._own_pipeline = pipeline is None
        self._live = live
        self._running: dict[str, _Running] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closing = False
        self._reload_lock = asyncio.Lock()
        self._today_rebuilt_at = -math.inf  # time.monotonic() of the last rebuild of today's day rows
        self._version: int | None = None
        self._start_done: asyncio.Event | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise RuntimeError("the collector is not started")
        return self._pipeline

    async def start(self) -> None:
        """Start the pipeline (unless one was given), every source, and the maintenance loops.

        Raises :class:`SourceFileError` for a config file that cannot be used,
        and ``ValueError`` for a bad ``otlp`` address; a single source that
        cannot start does not raise (see :meth:`statuses`).
        """
        if self._started or self._start_done is not None:
            return
        self._start_done = asyncio.Event()
        try:
            await self._start()
        finally:
            self._start_done.set()

    async def _start(self) -> None:
        # Store reads go to a thread: the app's runtime loop also runs the gateway.
        self._version = await asyncio.to_thread(get_control_version, self.store.engine)
        # A bad file or address fails here, before anything runs.
        configs = await asyncio.to_thread(self._desired_configs)
        if self._pipeline is None:
            self._pipeline = Pipeline(self.store, live=self._live)
        if self._own_pipeline:
            self._pipeline.start()
        self._started = True
        await self._apply(configs)
        await self.settle()
        for every, job, name in (
            (self.compact_every_s, self.compact_now, "compact"),
            (self.retain_every_s, self.retain_now, "retain"),
            (self.reload_every_s, self.reload, "reload"),
            (self.watch_every_s, self._watch_version, "watch"),
        ):
            if every is not None and every > 0:
                # A store opened with a backlog (a big `controlroom ingest`, a day offline) gets its
                # history tiers soon after start, not a full period later: charts read them.
                first = min(every, FIRST_COMPACTION_S) if name == "compact" else every
                self._tasks.append(
                    asyncio.create_task(self._every(every, job, first), name=f"collector-{name}")
                )

    async def aclose(self) -> None:
        """Stop every source (letting in-flight writes finish), the maintenance loops, and an owned pipeline.

        Called while :meth:`start` is still under way (the app quitting at once), it waits for the
        start to finish first, so nothing is left running.
        """
        if self._start_done is not None and not self._start_done.is_set():
            await self._start_done.wait()
        if not self._started or self._closing:
            self._start_done = None
            return
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*[self._stop(r) for r in list(self._running.values())], return_exceptions=True)
        self._running.clear()
        if self._own_pipeline and self._pipeline is not None:
            await asyncio.to_thread(self._pipeline.stop)
        self._started = False
        self._closing = False
        self._start_done = None

    async def __aenter__(self) -> Collector:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def settle(self, within: float = 2.0) -> None:
        """Wait (at most ``within`` s) until every started source is past ``starting``: a receiver bound
        to its port, a poller through its first attempt."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(s.state is not SourceState.STARTING for s in self.statuses()):
                return
            await asyncio.sleep(0.01)

    # -- what runs ----------------------------------------------------------------------------
    def statuses(self) -> list[SourceStatus]:
        """Every configured source's status, by name."""
        return [self._running[name].status() for name in sorted(self._running)]

    def reports(self, now: float | None = None) -> list[SourceReport]:
        """Every configured source as the UI shows it: status, events/s, lag, origin.  Call on the loop."""
        wall = time.time() if now is None else now
        mono = time.monotonic()
        out = []
        for name in sorted(self._running):
            entry = self._running[name]
            st = entry.status()
            out.append(
                SourceReport(
                    name=st.name,
                    kind=st.kind,
                    state=st.state,
                    origin=entry.origin,
                    paused=entry.config.paused,
                    ingested=st.ingested,
                    duplicates=st.duplicates,
                    rejected=st.rejected,
                    events_per_s=entry.sample(mono, st.ingested),
                    lag=_lag(entry, wall),
                    last_error=st.last_error,
                    last_event_at=st.last_event_at,
                    detail=st.detail,
                    restarts=entry.restarts,
                    quarantine_keys=quarantine_keys(entry.config),
                )
            )
        return out

    def source(self, name: str) -> Any:
        """The running source object named ``name`` (``None`` when it is not running)."""
        entry = self._running.get(name)
        return entry.source if entry is not None else None

    async def reload(self) -> None:
        """Read the configs again; restart what changed, stop what went, start what came."""
        try:
            configs = await asyncio.to_thread(self._desired_configs)
        except Exception as exc:  # keep running what runs; say why the new configs were not taken
            self.maintenance.last_reload_error = str(exc)
            log.warning("collector: not reloading sources: %s", exc)
            return
        self.maintenance.reloads += 1
        self.maintenance.last_reload_error = None
        await self._apply(configs)

    def _desired_configs(self) -> dict[str, tuple[SourceConfig, str]]:
        out: dict[str, tuple[SourceConfig, str]] = {}
        for c in list_source_configs(self.store.engine):
            out[c.name] = (c, "store")
        for path in self.config_files:
            for c in load_source_file(path):
                if c.name in out:
                    raise SourceFileError(
                        f"{path}: source {c.name!r} is also configured in {out[c.name][1]}; names must be unique"
                    )
                out[c.name] = (c, str(path))
        if self.otlp is not None:
            from app.sources.otlp import parse_listen

            host, port = parse_listen(self.otlp)
            listening = {
                _otlp_address(c.settings) for c, _ in out.values() if c.kind == "otlp" and not c.paused
            }
            if (host, port) not in listening:
                name = "otlp" if "otlp" not in out else f"otlp-{port}"
                out[name] = (SourceConfig(name, "otlp", {"listen": f"{host}:{port}"}), "--otlp")
        if self.usage_from_providers:
            explicit = {str(c.settings.get("provider")) for c, _ in out.values() if c.kind == "usage_api"}
            for p in _providers(self.store):
                if (
                    p.get("admin_key_ref")
                    and p.get("kind") in ("openai", "anthropic")
                    and p["name"] not in explicit
                ):
                    name = f"usage:{p['name']}"
                    if name not in out:
                        out[name] = (SourceConfig(name, "usage_api", {"provider": p["name"]}), "provider")
        return out

    async def _apply(self, desired: Mapping[str, tuple[SourceConfig, str]]) -> None:
        async with self._reload_lock:
            for name in [n for n in self._running if n not in desired]:
                await self._stop(self._running.pop(name))
            for name, (config, origin) in desired.items():
                current = self._running.get(name)
                if current is not None and current.config == config:
                    continue
                if current is not None:
                    await self._stop(current)
                entry = _Running(config, origin)
                self._running[name] = entry
                if config.paused:
                    continue
                try:
                    entry.source = self._build(config)
                except Exception as exc:  # a bad setting: shown on the sources page, nothing else stops
                    entry.error = str(exc)
                    log.warning("source %s: %s", name, exc)
                    continue
                entry.task = asyncio.create_task(self._supervise(entry), name=f"source-{name}")

    def _build(self, config: SourceConfig) -> Any:
        s = dict(config.settings)
        if config.kind == "otlp":
            from app.sources.otlp import OtlpReceiver

            unknown = set(s) - {"listen", "max_body_bytes"}
            if unknown:
                raise ValueError(f"unknown otlp settings {sorted(unknown)}: use listen (HOST:PORT)")
            host, port = _otlp_address(s)
            kwargs = {"max_body_bytes": int(s["max_body_bytes"])} if "max_body_bytes" in s else {}
            return OtlpReceiver(host, port, name=config.name, source=config.name, **kwargs)
        if config.kind == "jsonl":
            from app.sources.jsonl import JsonlTail

            unknown = set(s) - {"path", "format", "poll_interval"}
            if unknown or not isinstance(s.get("path"), str):
                raise ValueError("a jsonl source needs path (a file) and takes format and poll_interval")
            return JsonlTail(
                os.path.expanduser(s["path"]),
                s.get("format"),
                name=config.name,
                poll_interval=float(s.get("poll_interval", 0.25)),
            )
        if config.kind == "http_poll":
            from app.sources.http_poll import HttpPollConfig, HttpPoller

            return HttpPoller(config.name, HttpPollConfig.from_settings(s, where=f"source {config.name!r}"))
        if config.kind == "usage_api":
            from app.sources.usage_api import UsageApiConfig, UsagePoller

            provider = s.pop("provider", None)
            if not isinstance(provider, str):
                raise ValueError("a usage_api source needs provider: the name of a provider in the store")
            row = next((p for p in _providers(self.store) if p["name"] == provider), None)
            if row is None:
                raise ValueError(
                    f"no provider named {provider!r} in the store (add it with `controlroom config apply`)"
                )
            admin = s.pop("admin_key", None) or row.get("admin_key_ref") or "keyring"
            return UsagePoller(
                config.name,
                UsageApiConfig(
                    provider=provider, kind=row["kind"], base_url=row.get("base_url"), admin_key=admin, **s
                ),
                self.store.engine,
            )
        raise ValueError(f"unknown source kind {config.kind!r}: one of {', '.join(SOURCE_KINDS)}")

    async def _supervise(self, entry: _Running) -> None:
        """Run a source; if it fails (not by a stop), say why and start it again after a growing pause."""
        delay = _RESTART_MIN_S
        while not entry.stopping:
            try:
                await entry.source.run(self.pipeline)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                entry.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)
                entry.restarts += 1
                log.warning(
                    "source %s stopped: %s (starting again in %.0f s)", entry.config.name, entry.error, delay
                )
            else:
                if entry.stopping:
                    return
                entry.error = None
                return  # a source that ends by itself (a one-shot read) is done
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_MAX_S)

    async def _stop(self, entry: _Running) -> None:
        entry.stopping = True
        if entry.source is not None:
            entry.source.stop()
        task = entry.task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=10.0)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        except Exception as exc:  # the source failed while stopping: nothing left to do but say so
            log.warning("source %s failed while stopping: %s", entry.config.name, exc)

    # -- maintenance --------------------------------------------------------------------------
    async def compact_now(self) -> CompactionResult | None:
        """Build the history tiers for every block written since the last pass (in worker threads).

        A backlog (a big backfill) is worked through in passes of
        :data:`COMPACT_MAX_BLOCKS` blocks, so the pipeline's writer never waits long.
        """
        total: CompactionResult | None = None
        # Today's day rows are rebuilt every TODAY_EVERY_S only: until then charts read today's hours.
        now = time.time()
        # The interval on the monotonic clock: a wall clock set back must not hold today's rows back.
        started = time.monotonic()
        rebuild_today = started - self._today_rebuilt_at >= TODAY_EVERY_S
        days_before = None if rebuild_today else now - now % _DAY
        while not self._closing:
            try:
                result = await asyncio.to_thread(
                    compact_rollups,
                    self.store.engine,
                    policy=self.retention,
                    max_blocks=COMPACT_MAX_BLOCKS,
                    days_before=days_before,
                )
            except Exception as exc:
                self.maintenance.last_compaction_error = str(exc)
                log.warning("collector: compaction failed: %s", exc)
                return total
            self.maintenance.compactions += 1
            self.maintenance.last_compaction = result
            self.maintenance.last_compaction_error = None
            total = result
            if not result.remaining:
                break
        if rebuild_today and total is not None:
            self._today_rebuilt_at = started
        return total

    async def retain_now(self) -> None:
        try:
            await asyncio.to_thread(apply_retention, self.store.engine, policy=self.retention)
        except Exception as exc:
            self.maintenance.last_retention_error = str(exc)
            log.warning("collector: retention failed: %s", exc)
            return
        self.maintenance.retentions += 1
        self.maintenance.last_retention_error = None

    async def _watch_version(self) -> None:
        """Reload as soon as the control version moves (a source edited, paused or removed)."""
        try:
            version = await asyncio.to_thread(get_control_version, self.store.engine)
        except Exception as exc:  # the store is busy or gone for a moment: the next look will tell
            log.debug("collector: control version unavailable: %s", exc)
            return
        if version != self._version:
            self._version = version
            await self.reload()
        for entry in list(self._running.values()):  # events/s keeps moving without a viewer
            if entry.source is not None:
                entry.sample(time.monotonic(), entry.status().ingested)

    async def _every(self, seconds: float, job: Any, first: float | None = None) -> None:
        await asyncio.sleep(seconds if first is None else first)
        while True:
            await job()
            await asyncio.sleep(seconds)


def _otlp_address(settings: Mapping[str, Any]) -> tuple[str, int]:
    from app.sources.otlp import DEFAULT_HOST, DEFAULT_PORT, parse_listen

    listen = settings.get("listen")
    if listen is None:
        return DEFAULT_HOST, DEFAULT_PORT
    return parse_listen(str(listen))


def _providers(store: Store) -> list[dict[str, Any]]:
    from storage.queries.control import list_objects

    return list_objects(store.engine, "provider")


# --- ``controlroom collect`` ---------------------------------------------------------------


def format_status(status: SourceStatus) -> str:
    """One line per source for a terminal."""
    line = f"  {status.name:<20} {status.kind:<10} {status.state.value:<8} {status.detail}"
    if status.last_error and status.state is not SourceState.RUNNING:
        line += f"\n  {'':<20} {'':<10} {'':<8} last error: {status.last_error}"
    return line


async def collect(
    store: Store,
    *,
    otlp: str | None,
    config_files: Sequence[Path],
    stop: asyncio.Event,
    status_every_s: float | None = 60.0,
    out: Any = None,
    **options: Any,
) -> Pipeline:
    """Run a collector until ``stop`` is set, printing statuses to ``out``; returns its pipeline (for totals)."""
    import sys

    stream = out if out is not None else sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    collector = Collector(store, otlp=otlp, config_files=config_files, **options)
    await collector.start()
    try:
        statuses = collector.statuses()
        say(f"collecting into {store.url} from {len(statuses)} source{'s' if len(statuses) != 1 else ''}:")
        for status in statuses:
            say(format_status(status))
        if not statuses:
            say("  (none configured: pass --otlp HOST:PORT or --config FILE, or add sources in the app)")
        say("ready; stop with Ctrl+C")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=status_every_s if status_every_s else None)
            if not stop.is_set() and status_every_s:
                say(time.strftime("%H:%M:%S") + " sources:")
                for status in collector.statuses():
                    say(format_status(status))
        return collector.pipeline
    finally:
        await collector.aclose()


def run_collect(
    store_url: str | None,
    *,
    otlp: str | None = None,
    config_files: Sequence[Path] = (),
    status_every_s: float | None = 60.0,
) -> int:
    """The ``controlroom collect`` command: run until SIGINT or SIGTERM; exit status 0, or 1 with a message."""
    import signal
    import sys

    from storage.engine import StoreError, open_store

    try:
        store = open_store(store_url)
    except StoreError as exc:
        print(f"controlroom: {exc}", file=sys.stderr)
        return 1

    async def main() -> Pipeline:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: Ctrl+C raises instead
                loop.add_signal_handler(sig, stop.set)
        return await collect(
            store, otlp=otlp, config_files=config_files, stop=stop, status_every_s=status_every_s
        )

    try:
        pipeline = asyncio.run(main())
    except (SourceFileError, ValueError) as exc:
        print(f"controlroom: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        store.close()
    t = pipeline.totals
    print(
        f"stopped; ingested {t.ingested:,}, duplicates {t.duplicates:,}, rejected {t.rejected:,}", flush=True
    )
    return 0


__all__ = [
    "COMPACT_MAX_BLOCKS",
    "Collector",
    "MaintenanceStats",
    "SourceFileError",
    "SourceReport",
    "collect",
    "format_status",
    "load_source_file",
    "parse_source_list",
    "quarantine_keys",
    "run_collect",
    "source_problems",
]
