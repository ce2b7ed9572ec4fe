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
- every ``reload_every_s``: the configs again; a source whose settings
  changed is restarted, a removed or paused one stopped, a new one started.

Every source writes through one :class:`~app.sources.pipeline.Pipeline` (the
one writer).  ``start()`` and ``aclose()`` run on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from storage.queries.source_configs import SOURCE_KINDS, SourceConfig, list_source_configs

log = logging.getLogger(__name__)

#: Dirty 5-minute blocks compacted per pass (a backlog is worked through in several passes).
COMPACT_MAX_BLOCKS = 288
#: Seconds between rebuilds of today's day rows (a day's rows merge 24 hours of sketches).
TODAY_EVERY_S = 900.0
_DAY = 86_400
_RESTART_MIN_S = 1.0
_RESTART_MAX_S = 60.0


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
        retention: RetentionPolicy = DEFAULT_RETENTION,
    ) -> None:
        self.store = store
        self.otlp = otlp
        self.config_files = [Path(p) for p in config_files]
        self.usage_from_providers = usage_from_providers
        self.compact_every_s = compact_every_s
        self.retain_every_s = retain_every_s
        self.reload_every_s = reload_every_s
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
        self._today_rebuilt_at = 0.0

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
        if self._started:
            return
        configs = self._desired_configs()  # a bad file or address fails here, before anything runs
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
        ):
            if every is not None and every > 0:
                self._tasks.append(asyncio.create_task(self._every(every, job), name=f"collector-{name}"))

    async def aclose(self) -> None:
        """Stop every source (letting in-flight writes finish), the maintenance loops, and an owned pipeline."""
        if not self._started or self._closing:
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

    def source(self, name: str) -> Any:
        """The running source object named ``name`` (``None`` when it is not running)."""
        entry = self._running.get(name)
        return entry.source if entry is not None else None

    async def reload(self) -> None:
        """Read the configs again; restart what changed, stop what went, start what came."""
        try:
            configs = self._desired_configs()
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
                s["path"],
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
        rebuild_today = now - self._today_rebuilt_at >= TODAY_EVERY_S
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
            self._today_rebuilt_at = now
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

    async def _every(self, seconds: float, job: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            await job()


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
    "collect",
    "format_status",
    "load_source_file",
    "parse_source_list",
    "run_collect",
]
