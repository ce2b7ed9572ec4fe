"""The simulated provider server: OpenAI and Anthropic on one port, steered through ``/_sim``.

Provider endpoints (see openai_api.py, anthropic_api.py, reports.py)::

    POST /v1/chat/completions                  OpenAI chat (plain, SSE, tools, n)
    POST /v1/embeddings                        OpenAI embeddings (float or base64)
    GET  /v1/models, /v1/models/{id}           OpenAI list; the Anthropic list when anthropic-version is sent
    GET  /v1/organization/usage/completions    OpenAI usage (also .../usage/embeddings)
    GET  /v1/organization/costs                OpenAI costs
    POST /v1/messages                          Anthropic messages (plain and event stream)
    POST /v1/messages/count_tokens             Anthropic token count
    GET  /v1/organizations/usage_report/messages, /v1/organizations/cost_report   Anthropic admin reports

Control endpoints (no auth; the server listens on loopback)::

    GET  /_sim/state                 scenario, seed, request count, per-model weather
    GET  /_sim/scenarios             names of the shipped scenarios
    POST /_sim/scenario              switch the weather now. Body: {"name": "degraded"}, {"file": "/path.yaml"},
                                     {"scenario": {...mapping...}} or a full mapping with a "name" key.
                                     Outage windows and the scripted sequence restart from this moment. 400 with
                                     {"error": "..."} when the scenario is invalid (the old one stays active).
    POST /_sim/reset                 forget everything served (ledger, counter, prompt cache, rate-limit buckets)
                                     and restart the scenario clock: the next request is seq 1 again
    GET  /_sim/served?since=N        the ledger's records after seq N, as {"records": [...]}

Test hooks: API keys starting ``sk-invalid`` or ``sk-ant-invalid`` get the provider's 401; model names starting
``missing-`` get its 404; a request header ``x-sim-fault: <fault>`` forces one fault on that request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from app.sim import answers
from app.sim.anthropic_api import AnthropicFace
from app.sim.anthropic_api import error as anthropic_error
from app.sim.engine import SimEngine
from app.sim.ledger import Ledger
from app.sim.openai_api import OpenAIFace
from app.sim.openai_api import error as openai_error
from app.sim.reports import AnthropicReports, OpenAIReports
from app.sim.scenario import Scenario, ScenarioError, list_scenarios, load_scenario
from app.sim.wire import MAX_BODY_BYTES, ApiError, bearer, json_response, key_is_invalid, read_json

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SHUTDOWN_GRACE = 1.0  # seconds in-flight requests (a hang, a slow stream) get before stop() cancels them


class SimServer:
    """One simulator on one port.  ``start``/``stop`` run on the caller's event loop."""

    def __init__(self, scenario: Any = "instant", seed: int = 0, *, max_records: int = 100_000) -> None:
        self.engine = SimEngine(scenario, seed, max_records=max_records)
        self.openai = OpenAIFace(self.engine)
        self.anthropic = AnthropicFace(self.engine)
        self._runner: web.AppRunner | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._host = "127.0.0.1"
        self._port: int | None = None

    # --- what tests and the CLI use -----------------------------------------------------------------

    @property
    def served(self) -> Ledger:
        return self.engine.ledger

    @property
    def scenario(self) -> Scenario:
        return self.engine.scenario

    @property
    def seed(self) -> int:
        return self.engine.seed

    def set_scenario(self, name_or_mapping: Any) -> Scenario:
        """Switch the weather now (safe from any thread).  Raises ScenarioError for a bad scenario."""
        return self.engine.set_scenario(name_or_mapping)

    def reset(self) -> None:
        self.engine.reset()

    def state(self) -> dict[str, Any]:
        return {**self.engine.state(), "base_url": self.base_url if self._port else None}

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    # --- lifecycle -----------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        for route in [*self.openai.routes(), *self.anthropic.routes()]:
            app.router.add_route(route.method, route.path, self._tracked(route.handler))
        app.add_routes(OpenAIReports(self.engine.ledger).routes())
        app.add_routes(AnthropicReports(self.engine.ledger).routes())
        app.add_routes(
            [
                web.get("/v1/models", self._models),
                web.get("/v1/models/{model}", self._model),
                web.get("/_sim/state", self._state),
                web.get("/_sim/scenarios", self._scenarios),
                web.post("/_sim/scenario", self._scenario),
                web.post("/_sim/reset", self._reset),
                web.get("/_sim/served", self._served),
            ]
        )
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        # Load the tokenizer and the price table now, off the loop, so the first request is not 0.5 s slow.
        await asyncio.get_running_loop().run_in_executor(None, _warm_up)
        runner = web.AppRunner(
            self.make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        self._port = int(runner.addresses[0][1])
        log.info(
            "simulator serving scenario %r on %s (seed %d)", self.scenario.name, self.base_url, self.seed
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Requests that are hanging or streaming slowly end now, rather than after aiohttp's grace periods.
        pending = [t for t in self._inflight if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_SHUTDOWN_GRACE)
        await runner.cleanup()
        self._port = None

    def _tracked(self, handler: Handler) -> Handler:
        inflight = self._inflight

        async def tracked(request: web.Request) -> web.StreamResponse:
            task = asyncio.current_task()
            if task is not None:
                inflight.add(task)
            try:
                return await handler(request)
            finally:
                inflight.discard(task)

        return tracked

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- /v1/models ----------------------------------------------------------------------------------

    def _is_anthropic(self, request: web.Request) -> bool:
        return "anthropic-version" in request.headers or "x-api-key" in request.headers

    def _models_auth(self, request: web.Request) -> None:
        if self._is_anthropic(request):
            key = request.headers.get("x-api-key") or bearer(request) or ""
            if key_is_invalid(key):
                raise ApiError(
                    401, anthropic_error("authentication_error", "invalid x-api-key", "req_models")
                )
        else:
            key = bearer(request) or ""
            if key_is_invalid(key):
                raise ApiError(
                    401,
                    openai_error(
                        401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
                    ),
                )

    async def _models(self, request: web.Request) -> web.Response:
        try:
            self._models_auth(request)
        except ApiError as exc:
            return exc.response()
        face = self.anthropic if self._is_anthropic(request) else self.openai
        return json_response(face.list_models())

    async def _model(self, request: web.Request) -> web.Response:
        try:
            self._models_auth(request)
        except ApiError as exc:
            return exc.response()
        name = request.match_info["model"]
        if self._is_anthropic(request):
            found = self.anthropic.model(name)
            if found is None:
                return json_response(
                    anthropic_error("not_found_error", f"model: {name}", "req_models"), status=404
                )
        else:
            found = self.openai.model(name)
            if found is None:
                msg = f"The model `{name}` does not exist or you do not have access to it."
                return json_response(
                    openai_error(404, msg, "invalid_request_error", "model_not_found"), status=404
                )
        return json_response(found)

    # --- /_sim ---------------------------------------------------------------------------------------

    async def _state(self, request: web.Request) -> web.Response:
        return json_response(self.state())

    async def _scenarios(self, request: web.Request) -> web.Response:
        return json_response({"scenarios": list_scenarios(), "active": self.scenario.name})

    async def _scenario(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request, ScenarioError)
            if not isinstance(body, Mapping):
                raise ScenarioError(
                    'expected a JSON object: {"name": ...}, {"file": ...} or {"scenario": {...}}'
                )
            if "scenario" in body:
                spec: Any = body["scenario"]
            elif "file" in body:
                spec = str(body["file"])
            elif set(body) == {"name"}:
                spec = str(body["name"])
            else:
                spec = body
            if isinstance(spec, str) and not spec:
                raise ScenarioError("the scenario name is empty")
            self.set_scenario(load_scenario(spec))
        except ScenarioError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(self.state())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response(self.state())

    async def _served(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            return json_response({"error": "since: expected an integer"}, status=400)
        return json_response({"records": [r.to_dict() for r in self.served.records(since_seq=since)]})


def _warm_up() -> None:
    from app.core.pricing import price_call

    answers.encoding_for("gpt-4o")
    price_call("gpt-4o-mini", provider="openai", input_tokens=1, output_tokens=1)


# --- entry points ------------------------------------------------------------------------------------


async def run_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    scenario: Any = "healthy",
    seed: int = 0,
    *,
    on_ready: Callable[[SimServer], None] | None = None,
) -> None:
    """Serve until cancelled (the ``controlroom sim`` command).  ``on_ready`` gets the running server."""
    server = SimServer(scenario, seed)
    await server.start(host, port)
    try:
        if on_ready is not None:
            on_ready(server)
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(server.stop())


class SimThread:
    """A simulator on its own event loop in a background thread named ``controlroom-sim``.

    For tests and for processes that have no loop of their own::

        with SimThread("instant", seed=7) as sim:
            client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test")
    """

    def __init__(
        self, scenario: Any = "instant", seed: int = 0, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.server = SimServer(scenario, seed)
        self._host, self._port = host, port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> SimServer:
        if self._thread is not None:
            raise RuntimeError("this SimThread was already started")
        self._thread = threading.Thread(target=self._run, name="controlroom-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the simulator did not start within {timeout} s")
        if self._error is not None:
            self._thread.join(timeout)
            raise RuntimeError(f"the simulator could not start: {self._error}") from self._error
        return self.server

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the simulator thread did not stop within {timeout} s")

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start(self._host, self._port)
        except BaseException as exc:  # reported to start(), which raises it in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.stop()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
