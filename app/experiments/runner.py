"""The A/B runner: every variant x case x repetition through the in-process gateway, within limits.

- Concurrent: ``experiment.concurrency`` workers on the caller's asyncio loop.
- Within each provider's RPM/TPM (:class:`RateGate`): the limits from the
  provider's config, or, when the config has none, from the ``x-ratelimit-*``
  / ``anthropic-ratelimit-*`` headers; the headers also pull our own count down
  when someone else is using the same key.
- Retries: the gateway's, as semantics.md section 4 says (a one-target route per
  variant target, the default retry policy, server hints honoured).  A case
  that still fails is stored as an error with the gateway's message.
- Resumable: results are stored one by one under a unique key (run x variant x
  case x repetition); :meth:`ExperimentRunner.run` on an existing run calls only
  what is not stored, so nothing finished is billed twice, after a cancel or a crash.
- Progress: a callback with done/total, ETA and the running cost (judge calls included).
- Cancellable: :meth:`ExperimentRunner.cancel` (thread-safe); in-flight calls are
  cancelled, what finished is kept, and the run is marked ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.core import tokens as core_tokens
from app.core.prompts import PromptError, merge_params, variables
from app.experiments.checks import CheckResult, is_refusal, judge_request, read_judgement, run_check
from app.experiments.spec import Case, CheckSpec, Experiment, PromptSpec, Variant, experiment_to_data, render
from app.gateway.engine import Gateway, GatewayError
from app.providers.base import FinishReason
from app.providers.ratelimits import RateLimitInfo
from storage.engine import Store
from storage.queries import experiments as q

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_TOKENS = 256  # what a call is assumed to produce before any answer has been seen
JUDGE_MAX_TOKENS = 400


class ExperimentRunError(RuntimeError):
    """The run cannot start (an unknown target, a registry prompt that does not exist, ...)."""


# --- rate limits ---------------------------------------------------------------------------------


class RateGate:
    """Requests and tokens per minute for one provider, as two continuously refilled buckets.

    Starts cautious (one call) unless told to start full, then trusts the
    first rate-limit headers it sees for the level; later headers can only lower it (someone
    else is using the key).  A header's ``remaining`` is corrected for what we sent after that
    request and for the refill since, so the estimate stays on the safe side.
    """

    def __init__(
        self,
        name: str,
        rpm: int | None,
        tpm: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        start_full: bool = False,
    ) -> None:
        self.name = name
        self._sleep = sleep
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        now = clock()
        self._req = float(rpm) if (rpm and start_full) else (1.0 if rpm else math.inf)
        self._tok = float(tpm) if (tpm and start_full) else (0.0 if tpm else math.inf)
        self._updated = now
        self._synced_req = start_full
        self._synced_tok = start_full
        self._lock = asyncio.Lock()
        self._sent = 0
        self._sent_tokens = 0
        self._sent_at: dict[int, tuple[float, int]] = {}  # seq -> (when, tokens sent before it, incl.)
        self.waited_s = 0.0

    def _refill(self, now: float) -> None:
        dt = max(now - self._updated, 0.0)
        self._updated = now
        if self.rpm:
            self._req = min(float(self.rpm), self._req + dt * self.rpm / 60.0)
        if self.tpm:
            self._tok = min(float(self.tpm), self._tok + dt * self.tpm / 60.0)

    async def acquire(self, tokens: int) -> int:
        """Wait until one request of ``tokens`` tokens may go; returns its sequence number."""
        async with self._lock:  # first come, first served
            while True:
                now = self._clock()
                self._refill(now)
                wait = 0.0
                if self.rpm and self._req < 1.0:
                    wait = (1.0 - self._req) * 60.0 / self.rpm
                first = self._sent == 0 and not self._synced_tok  # one call goes, to learn from its headers
                if self.tpm and not first:
                    # A call bigger than the whole minute waits for a full one.
                    need = min(float(tokens), float(self.tpm))
                    if self._tok < need:
                        wait = max(wait, (need - self._tok) * 60.0 / self.tpm)
                if wait <= 0.0:
                    break
                self.waited_s += wait
                await self._sleep(wait)
            if self.rpm:
                self._req -= 1.0
            if self.tpm:
                self._tok -= tokens
            self._sent += 1
            self._sent_tokens += tokens
            self._sent_at[self._sent] = (now, self._sent_tokens)
            return self._sent

    def settle(self, seq: int, estimated: int, actual: int | None, info: RateLimitInfo | None) -> None:
        """A call ended: correct the token estimate and learn from its rate-limit headers."""
        sent = self._sent_at.pop(seq, None)
        now = self._clock()
        self._refill(now)
        if self.tpm and actual is not None:
            self._tok -= actual - estimated
        if info is None or sent is None:
            return
        sent_at, tokens_through = sent
        if info.requests is not None and info.requests.limit:
            limit = info.requests.limit
            if self.rpm is None or limit < self.rpm:
                self.rpm = limit
                if math.isinf(self._req):
                    self._req = 1.0
        if self.rpm and info.requests is not None and info.requests.remaining is not None:
            est = info.requests.remaining + (now - sent_at) * self.rpm / 60.0 - (self._sent - seq)
            est = min(est, float(self.rpm))
            self._req = est if not self._synced_req else min(self._req, est)
            self._synced_req = True
        if info.tokens is not None and info.tokens.limit:
            limit = info.tokens.limit
            if self.tpm is None or limit < self.tpm:
                self.tpm = limit
                if math.isinf(self._tok):
                    self._tok = 0.0
        if self.tpm and info.tokens is not None and info.tokens.remaining is not None:
            est = (
                info.tokens.remaining
                + (now - sent_at) * self.tpm / 60.0
                - (self._sent_tokens - tokens_through)
            )
            est = min(est, float(self.tpm))
            self._tok = est if not self._synced_tok else min(self._tok, est)
            self._synced_tok = True


# --- progress and outcome ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    run_id: str
    done: int  # results stored (from earlier sessions of a resumed run too)
    total: int
    errors: int
    cost_usd: float  # variant calls and judge calls
    elapsed_s: float  # this session
    eta_s: float | None  # None until a few results give a rate
    skipped: int  # results that were already stored when this session began
    running: bool = True

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass(slots=True)
class RunOutcome:
    run_id: str
    status: str  # done | cancelled | failed
    done: int
    total: int
    calls: int  # calls made in this session (variant and judge)
    cost_usd: float
    error: str | None = None
    skipped: int = 0
    waited_s: dict[str, float] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]


# --- prompts -------------------------------------------------------------------------------------


def resolve_prompts(store: Store | None, exp: Experiment) -> Experiment:
    """Fill registry prompts (``name@version``, ``name@active``) from the store's prompt registry.

    ``@active`` is pinned to the version active now, so the whole run uses one version even if
    someone promotes another meanwhile.  Every case must have the variables the version uses.
    """
    if all(p.registry_name is None or p.template is not None for p in exp.prompts):
        return exp
    if store is None:
        raise ExperimentRunError("the experiment names registry prompts; it needs a store")
    from storage.queries import prompts as registry

    out: list[PromptSpec] = []
    for p in exp.prompts:
        if p.registry_name is None or p.template is not None:
            out.append(p)
            continue
        version = registry.get_version(store.engine, p.registry_name, p.registry_version)
        if version is None:
            what = (
                f"no active version of {p.registry_name} (promote one on the Prompts page, or name a version)"
                if p.registry_version is None
                else f"no {p.ref} (create it on the Prompts page first)"
            )
            raise ExperimentRunError(f"prompt `{p.id}`: the registry has {what}")
        resolved = PromptSpec(
            p.id,
            template=version.template,
            system=p.system,
            params=p.params,
            registry_name=p.registry_name,
            registry_version=version.version,
            line=p.line,
            body_system=version.system,
            body_params=dict(version.params),
        )
        wanted = variables(version.system, version.template)
        for case in exp.cases:
            missing = [v for v in wanted if v not in case.vars]
            if missing:
                raise ExperimentRunError(
                    f"{case.where or f'case {case.index + 1}'}: no {', '.join(missing)} "
                    f"(prompt `{p.id}` = {p.registry_name}@{version.version} uses "
                    f"{', '.join('{{' + v + '}}' for v in missing)})"
                )
        out.append(resolved)
    return exp.with_prompts(tuple(out))


def build_messages(prompt: PromptSpec, case: Case) -> tuple[str | None, list[dict[str, Any]]]:
    """The system prompt and messages for one case, rendered as the gateway renders a registry
    prompt (:func:`app.core.prompts.apply`: the version's system, then the file's)."""
    assert prompt.template is not None
    try:
        text = render(prompt.template, case.vars)
        systems = [render(s, case.vars) for s in (prompt.body_system, prompt.system) if s]
    except PromptError as exc:
        raise ExperimentRunError(
            f"{case.where or f'case {case.index + 1}'}: {exc} (prompt `{prompt.id}`)"
        ) from exc
    return "\n\n".join(systems) or None, [{"role": "user", "content": text}]


_OUTPUT_KEYS = ("max_tokens", "max_output_tokens", "max_completion_tokens")


# --- the runner ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    variant: Variant
    case: Case
    repetition: int


class ExperimentRunner:
    """Runs (or resumes) one experiment run.  See the module docstring.

    ``limits`` overrides the providers' configured ``(rpm, tpm)`` by provider name.
    """

    def __init__(
        self,
        gateway: Gateway,
        store: Store,
        experiment: Experiment,
        *,
        run_id: str | None = None,
        on_progress: ProgressFn | None = None,
        limits: dict[str, tuple[int | None, int | None]] | None = None,
        progress_interval_s: float = 0.0,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.experiment = experiment
        self.run_id = run_id or uuid.uuid4().hex
        self._on_progress = on_progress
        self._limits = limits or {}
        self._progress_interval_s = progress_interval_s
        self._gates: dict[str, RateGate] = {}
        self._cancel: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancel_requested = False
        self._done = 0
        self._errors = 0
        self._cost = 0.0
        self._calls = 0
        self._skipped = 0
        self._session_done = 0
        self._started = 0.0
        self._last_progress = 0.0
        self._output_avg: dict[str, float] = {}

    # -- control ------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop the run soon: no new calls; in-flight ones are cancelled.  Safe from any thread."""
        self._cancel_requested = True
        loop, ev = self._loop, self._cancel
        if loop is not None and ev is not None:
            loop.call_soon_threadsafe(ev.set)

    def gate(self, provider: str) -> RateGate:
        g = self._gates.get(provider)
        if g is None:
            p = self.gateway.state.providers.get(provider)
            rpm, tpm = (p.rate_limits.rpm, p.rate_limits.tpm) if p and p.rate_limits else (None, None)
            if provider in self._limits:
                rpm, tpm = self._limits[provider]
            g = self._gates[provider] = RateGate(provider, rpm, tpm, clock=time.monotonic)
        return g

    def _provider_of(self, target: str) -> str:
        t = self.gateway.state.targets.get(target)
        if t is None:
            raise ExperimentRunError(
                f"target `{target}` is not defined (targets: {', '.join(sorted(self.gateway.state.targets)) or 'none'})"
            )
        return t.provider

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> RunOutcome:
        """Start the run, or resume it if ``run_id`` names one in the store."""
        self._loop = asyncio.get_running_loop()
        self._cancel = asyncio.Event()
        if self._cancel_requested:
            self._cancel.set()
        exp = self.experiment
        engine = self.store.engine
        for v in exp.variants:
            self._provider_of(v.target)
        for chk in exp.default_asserts + tuple(a for c in exp.cases for a in c.asserts):
            if chk.target is not None:
                self._provider_of(chk.target)
        existing = await asyncio.to_thread(q.get_run, engine, self.run_id)
        if existing is None:
            await asyncio.to_thread(
                q.create_run, engine, self.run_id, exp.name, experiment_to_data(exp), exp.total
            )
        else:
            await asyncio.to_thread(q.set_run_status, engine, self.run_id, "running")
            self._cost = existing.cost_usd
        done = await asyncio.to_thread(q.done_keys, engine, self.run_id)
        stored = [] if not done else await asyncio.to_thread(q.fetch_results, engine, self.run_id)
        self._errors = sum(1 for r in stored if r.status != "ok")
        self._cost += sum(
            float(c.get("cost_usd") or 0.0) for r in stored for c in r.checks if isinstance(c, dict)
        )
        self._done = self._skipped = len(done)
        # Case-major order: a cancelled run has every variant on the same cases (paired analysis).
        items = [
            _Item(v, case, rep)
            for case in exp.cases
            for rep in range(exp.repeat)
            for v in exp.variants
            if (v.name, case.index, rep) not in done
        ]
        self._started = time.monotonic()
        self._report(force=True)
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        for it in items:
            queue.put_nowait(it)
        results: asyncio.Queue[q.ResultRecord | None] = asyncio.Queue()
        writer = asyncio.create_task(self._writer(results), name="controlroom-ab-writer")
        workers = [
            asyncio.create_task(self._worker(queue, results), name=f"controlroom-ab-{i}")
            for i in range(min(exp.concurrency, max(len(items), 1)))
        ]
        cancel_wait: asyncio.Future[Any] = asyncio.ensure_future(self._cancel.wait())
        status, error = "done", None
        try:
            finished: asyncio.Future[Any] = asyncio.gather(*workers)
            await asyncio.wait([finished, cancel_wait], return_when=asyncio.FIRST_COMPLETED)
            if self._cancel.is_set() and not finished.done():
                status = "cancelled"
                for w in workers:
                    w.cancel()
            try:
                await finished
            except asyncio.CancelledError:
                if not self._cancel.is_set():
                    raise
        except ExperimentRunError as exc:
            status, error = "failed", str(exc)
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            results.put_nowait(None)
            with contextlib.suppress(BaseException):
                await writer
            with contextlib.suppress(Exception):
                await asyncio.to_thread(q.set_run_status, engine, self.run_id, "cancelled")
            raise
        finally:
            cancel_wait.cancel()
        results.put_nowait(None)
        await writer
        if status == "done" and self._cancel.is_set() and self._done < exp.total:
            status = "cancelled"
        await asyncio.to_thread(q.set_run_status, engine, self.run_id, status, error=error)
        self._report(force=True, running=False)
        return RunOutcome(
            self.run_id,
            status,
            self._done,
            exp.total,
            self._calls,
            self._cost,
            error,
            self._skipped,
            {name: g.waited_s for name, g in self._gates.items()},
        )

    async def _writer(self, results: asyncio.Queue[q.ResultRecord | None]) -> None:
        """Store results as they come, batching whatever piled up meanwhile."""
        engine = self.store.engine
        stop = False
        while not stop:
            batch: list[q.ResultRecord] = []
            item = await results.get()
            if item is None:
                stop = True
            else:
                batch.append(item)
            while not results.empty():
                nxt = results.get_nowait()
                if nxt is None:
                    stop = True
                else:
                    batch.append(nxt)
            if batch:
                await asyncio.to_thread(q.insert_results, engine, batch)
                self._done += len(batch)
                self._session_done += len(batch)
                self._errors += sum(1 for r in batch if r.status != "ok")
                self._report()

    def _report(self, *, force: bool = False, running: bool = True) -> None:
        if self._on_progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < self._progress_interval_s:
            return
        self._last_progress = now
        elapsed = now - self._started if self._started else 0.0
        remaining = self.experiment.total - self._done
        eta = None
        if self._session_done >= 2 and elapsed > 0:
            eta = remaining / (self._session_done / elapsed)
        elif remaining == 0:
            eta = 0.0
        try:
            self._on_progress(
                Progress(
                    self.run_id,
                    self._done,
                    self.experiment.total,
                    self._errors,
                    self._cost,
                    elapsed,
                    eta,
                    self._skipped,
                    running,
                )
            )
        except Exception:  # a broken progress display must not stop the run
            log.exception("the progress callback failed")

    async def _worker(
        self, queue: asyncio.Queue[_Item], results: asyncio.Queue[q.ResultRecord | None]
    ) -> None:
        assert self._cancel is not None
        while not self._cancel.is_set():
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results.put_nowait(await self._one(item))

    def _estimate(
        self,
        provider: str,
        model: str,
        system: str | None,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        *,
        key: str,
    ) -> int:
        """Tokens a call will take of the provider's minute: its input, and the output its variant
        (``key``) has been producing, with headroom, or the output cap the call sets."""
        gate = self.gate(provider)
        if not gate.tpm:
            return 0
        n_in = core_tokens.count_messages(messages, model, system).tokens
        out = next((params[k] for k in _OUTPUT_KEYS if isinstance(params.get(k), int)), None)
        seen = self._output_avg.get(key)
        if seen is not None:
            guess = int(seen * 1.25) + 1
            out = min(out, guess) if out is not None else guess
        elif out is None:
            out = DEFAULT_OUTPUT_TOKENS
        return int(n_in + out)

    async def _call(
        self,
        target: str,
        system: str | None,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        *,
        call_messages: list[dict[str, Any]] | None = None,
        call_system: str | None = None,
        call_params: dict[str, Any] | None = None,
        estimate_key: str = "",
        **extra: Any,
    ) -> tuple[Any, GatewayError | None]:
        """One gateway call within the target's provider limits: (response or None, error or None).

        ``system``/``messages``/``params`` are what reaches the model (for the token estimate);
        ``call_*`` replace them in the request when the gateway renders a registry prompt itself.
        """
        provider = self._provider_of(target)
        t = self.gateway.state.targets[target]
        key = estimate_key or target
        estimated = self._estimate(provider, t.model, system, messages, params, key=key)
        gate = self.gate(provider)
        seq = await gate.acquire(estimated)
        self._calls += 1
        try:
            if call_messages is not None:
                resp = await self.gateway.chat(
                    route=target,
                    messages=call_messages,
                    system=call_system,
                    params=dict(call_params or {}),
                    **extra,
                )
            else:
                resp = await self.gateway.chat(
                    route=target, messages=messages, system=system, params=dict(params), **extra
                )
        except GatewayError as exc:
            ev = exc.event
            gate.settle(seq, estimated, ev.input_tokens + ev.output_tokens if ev.input_tokens else None, None)
            if ev.cost_usd:
                self._cost += ev.cost_usd
            return None, exc
        except BaseException:
            gate.settle(seq, estimated, None, None)
            raise
        usage = resp.result.usage
        actual = usage.input_tokens + usage.output_tokens if usage is not None else None
        if usage is not None:
            prev = self._output_avg.get(key)
            out = float(usage.output_tokens)
            # Up at once, down slowly: an underestimate spends tokens the provider has not got.
            self._output_avg[key] = out if prev is None or out > prev else 0.9 * prev + 0.1 * out
        gate.settle(seq, estimated, actual, resp.result.rate_limits)
        if resp.event.cost_usd:
            self._cost += resp.event.cost_usd
        return resp, None

    async def _one(self, item: _Item) -> q.ResultRecord:
        exp = self.experiment
        v, case = item.variant, item.case
        prompt = v.prompt
        system, messages = build_messages(prompt, case)
        file_params = {**exp.default_params, **prompt.params}
        tags = {"experiment": exp.name, "ab_run": self.run_id[:12], "variant": v.name}
        if prompt.registry_name is not None:
            # The gateway renders a registry prompt itself, exactly as it will in production.
            resp, err = await self._call(
                v.target,
                system,
                messages,
                merge_params(prompt.body_params, file_params),
                call_messages=[],
                call_system=prompt.system,
                call_params=file_params,
                feature="ab",
                tags=tags,
                prompt_name=prompt.registry_name,
                prompt_version=prompt.registry_version,
                prompt_vars=dict(case.vars),
                estimate_key=v.name,
            )
        else:
            resp, err = await self._call(
                v.target, system, messages, file_params, feature="ab", tags=tags, estimate_key=v.name
            )
        rec = q.ResultRecord(self.run_id, v.name, case.index, item.repetition, "ok", created_at=time.time())
        if err is not None:
            ev = err.event
            rec.status = "error"
            rec.error = f"{err.failure.value}: {err.message}"
            rec.latency_ms, rec.cost_usd, rec.event_id = ev.latency_ms, ev.cost_usd, ev.event_id
            rec.input_tokens, rec.output_tokens = ev.input_tokens, ev.output_tokens
            return rec
        result, ev = resp.result, resp.event
        output = result.text if result.text or not result.refusal else result.refusal
        rec.output = output
        rec.latency_ms, rec.ttft_ms, rec.cost_usd, rec.event_id = (
            ev.latency_ms,
            ev.ttft_ms,
            ev.cost_usd,
            ev.event_id,
        )
        rec.input_tokens, rec.output_tokens = ev.input_tokens, ev.output_tokens
        refused = result.finish_reason is FinishReason.REFUSAL or bool(result.refusal)
        checks: list[dict[str, Any]] = []
        scores: list[float] = []
        passed = True
        prompt_text = "\n\n".join(x for x in (system, str(messages[0]["content"])) if x)
        for chk in exp.checks_for(case):
            if chk.type == "llm_judge":
                res, cost = await self._judge(chk, case, prompt_text, output)
                data = res.to_data() | {"cost_usd": cost}
                if res.score is None and res.reason.startswith("judge call failed"):
                    rec.status = "error"
                    rec.error = res.reason
            else:
                res = run_check(
                    chk, output, case, latency_ms=ev.latency_ms, cost_usd=ev.cost_usd, refused=refused
                )
                data = res.to_data()
            checks.append(data)
            passed = passed and res.passed
            if res.score is not None:
                scores.append(res.score)  # several judges: the mean of their scores
        rec.checks = checks
        rec.passed = passed if rec.status == "ok" else None
        rec.score = sum(scores) / len(scores) if scores else None
        return rec

    async def _judge(
        self, chk: CheckSpec, case: Case, prompt_text: str, output: str
    ) -> tuple[CheckResult, float]:
        assert chk.target is not None
        system, messages = judge_request(chk, case, prompt_text, output)
        resp, err = await self._call(
            chk.target,
            system,
            messages,
            {"temperature": 0, "max_tokens": JUDGE_MAX_TOKENS},
            estimate_key=f"judge:{chk.target}",
            feature="ab-judge",
            tags={"experiment": self.experiment.name, "ab_run": self.run_id[:12]},
        )
        if err is not None:
            return CheckResult(
                "llm_judge", chk.label(), False, None, f"judge call failed: {err.message}"
            ), float(err.event.cost_usd or 0.0)
        return read_judgement(chk, resp.result.text), float(resp.event.cost_usd or 0.0)


async def run_experiment(
    gateway: Gateway,
    store: Store,
    experiment: Experiment,
    *,
    run_id: str | None = None,
    on_progress: ProgressFn | None = None,
    limits: dict[str, tuple[int | None, int | None]] | None = None,
) -> RunOutcome:
    """Resolve registry prompts, save the definition, and run (or resume ``run_id``)."""
    exp = await asyncio.to_thread(resolve_prompts, store, experiment)
    await asyncio.to_thread(q.save_experiment, store.engine, exp.name, experiment_to_data(exp))
    runner = ExperimentRunner(gateway, store, exp, run_id=run_id, on_progress=on_progress, limits=limits)
    return await runner.run()


def refusal_rate(outputs: Sequence[str]) -> float:
    """Share of outputs that read as refusals (for reports)."""
    return sum(1 for o in outputs if is_refusal(o)) / len(outputs) if outputs else 0.0
