"""Registry prompts through the gateway: the official SDKs and the library, against the simulator.

The simulator answers ``SYS<...>`` and ``USER<...>`` back (a scenario rule), so each answer shows
what reached the provider: the rendered system prompt and user message.  A version's ``stop``
parameter cuts the rule's ``|END`` tail, which shows its parameters reached it too.  Events are
read back from the store for their prompt name and version, and, on a ``store_text`` route, the
rendered messages.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from app.core.config import ControlConfig, parse_config
from app.core.event import Failure
from app.gateway.engine import Gateway, GatewayError, GatewayStreamEnd
from app.providers import TextDelta
from app.sim import SimServer, SimThread
from storage.engine import Store, open_store
from storage.queries import control
from storage.queries import prompts as registry
from storage.queries.events import get_event
from tests.integration.test_gateway_server_fixtures import (
    KEY_ENV,
    SCENARIO,
    GatewayThread,
    apply_text,
    config_text,
    wait_for,
)

PROMPT = "support-summary"
HELLO = [{"role": "user", "content": "hello"}]
TICKET = {"ticket": "Printer on fire", "tone": "terse", "max_words": 12}

SIM_SCENARIO: dict[str, Any] = {
    **SCENARIO,
    "name": "prompt-tests",
    "answers": {
        "default_tokens": 12,
        "rules": [{"match": r"(?s)SYS<(?P<sys>[^>]*)>.*USER<(?P<user>[^>]*)>", "answer": "{sys}|{user}|END"}],
    },
}

ROUTE = """\
  - name: prompted
    store_text: true
    retry: {max_attempts: 1}
    rules:
      - chain: [fast]
"""


def v1() -> str:
    return "v1 " + TICKET["ticket"]


def seed(store: Store) -> None:
    """Two versions: v1 (active) renders the tone into the system prompt; v2 stops at "|END"."""
    registry.create_prompt(
        store.engine, PROMPT, description="Ticket summaries", actor="tests", reason="set-up"
    )
    registry.add_version(
        store.engine,
        PROMPT,
        template="USER<v1 {{ticket}}>",
        system="SYS<{{tone}}>",
        params={"temperature": 0},
        note="first",
        actor="tests",
    )
    registry.add_version(
        store.engine,
        PROMPT,
        template="USER<v2 {{ticket}} in {{max_words}} words>",
        system="SYS<plain>",
        params={"stop": ["|END"]},
        note="shorter",
        actor="tests",
    )
    registry.set_active_version(store.engine, PROMPT, 1, actor="tests", reason="set-up")


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimThread(SIM_SCENARIO, seed=3) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv(KEY_ENV, "sk-test-prompts-0123456789")
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    apply_text(s, config_text(sim, ROUTE))
    seed(s)
    yield s
    s.close()


@pytest.fixture
def gateway(store: Store) -> Iterator[GatewayThread]:
    with GatewayThread(store) as gw:
        yield gw


@pytest.fixture
def oai(gateway: GatewayThread) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="not-a-provider-key", max_retries=0)
    yield client
    client.close()


def headers(prompt: str = PROMPT, variables: dict[str, Any] | None = None) -> dict[str, str]:
    out = {"x-controlroom-prompt": prompt}
    if variables is not None:
        out["x-controlroom-prompt-vars"] = json.dumps(variables)
    return out


def stored(gateway: GatewayThread, event_id: str) -> Any:
    return wait_for(lambda: get_event(gateway.store.engine, event_id), what="the event in the store")


# --- the OpenAI SDK ---------------------------------------------------------------------------------


def test_openai_sdk_gets_the_active_version_rendered(oai: openai.OpenAI, gateway: GatewayThread) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="prompted", messages=[], extra_headers=headers(variables=TICKET)
    )
    assert raw.parse().choices[0].message.content == f"terse|{v1()}|END"
    event = stored(gateway, raw.headers["x-request-id"])
    assert (event.prompt_name, event.prompt_version, event.failure) == (PROMPT, 1, Failure.NONE)
    sent = json.loads(event.input_text)
    assert sent == [
        {"role": "system", "content": "SYS<terse>"},
        {"role": "user", "content": "USER<v1 Printer on fire>"},
    ]


def test_pinned_version_with_body_variables_and_its_parameters(
    oai: openai.OpenAI, gateway: GatewayThread
) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="prompted",
        messages=[{"role": "assistant", "content": "noted"}],
        extra_headers=headers(f"{PROMPT}@2"),
        extra_body={"prompt_vars": {"ticket": "Printer on fire", "max_words": 12}},
    )
    # v2's stop sequence reached the provider: the "|END" tail is cut.
    assert raw.parse().choices[0].message.content == "plain|v2 Printer on fire in 12 words"
    event = stored(gateway, raw.headers["x-request-id"])
    assert (event.prompt_name, event.prompt_version) == (PROMPT, 2)
    sent = json.loads(event.input_text)
    assert [m["role"] for m in sent] == ["system", "user", "assistant"]  # the caller's turn follows


def test_the_requests_explicit_parameters_win(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model="prompted", messages=[], stop=["|v2"], extra_headers=headers(f"{PROMPT}@2", TICKET)
    )
    assert out.choices[0].message.content == "plain"


def test_header_variables_win_over_body_variables(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model="prompted",
        messages=[],
        extra_headers=headers(variables={"ticket": "from the header"}),
        extra_body={"prompt_vars": {"ticket": "from the body", "tone": "calm"}},
    )
    assert out.choices[0].message.content == "calm|v1 from the header|END"


def test_streaming_renders_too(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="prompted", messages=[], stream=True, extra_headers=headers(variables=TICKET)
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == f"terse|{v1()}|END"


def test_a_stream_with_a_missing_variable_fails_before_it_starts(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="needs the variable ticket"):
        oai.chat.completions.create(
            model="prompted", messages=[], stream=True, extra_headers=headers(variables={"tone": "calm"})
        )


def test_errors_name_the_problem_and_still_leave_one_event(
    oai: openai.OpenAI, gateway: GatewayThread
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.with_raw_response.create(
            model="prompted", messages=[], extra_headers=headers(variables={"tone": "calm"})
        )
    assert "needs the variable ticket" in info.value.message
    assert f"prompt {PROMPT}@1" in info.value.message
    event = stored(gateway, info.value.response.headers["x-request-id"])
    assert (event.prompt_name, event.prompt_version, event.failure) == (PROMPT, 1, Failure.CLIENT_ERROR)

    with pytest.raises(openai.NotFoundError, match="no prompt called 'ghost'"):
        oai.chat.completions.create(model="prompted", messages=[], extra_headers=headers("ghost", {}))
    with pytest.raises(openai.NotFoundError, match="no prompt called 'ghost'"):
        oai.chat.completions.create(
            model="prompted", messages=HELLO, extra_headers=headers("ghost", {"a": 1})
        )
    with pytest.raises(openai.NotFoundError, match="has no version 9"):
        oai.chat.completions.create(model="prompted", messages=[], extra_headers=headers(f"{PROMPT}@9", {}))
    with pytest.raises(openai.BadRequestError, match="x-controlroom-prompt-vars is not valid JSON"):
        oai.chat.completions.create(
            model="prompted",
            messages=[],
            extra_headers={"x-controlroom-prompt": PROMPT, "x-controlroom-prompt-vars": "{nope"},
        )
    with pytest.raises(openai.BadRequestError, match="NAME or NAME@VERSION"):
        oai.chat.completions.create(model="prompted", messages=[], extra_headers=headers(f"{PROMPT}@x"))
    # Without a prompt, an empty conversation is still refused.
    with pytest.raises(openai.BadRequestError, match="messages is required"):
        oai.chat.completions.create(model="prompted", messages=[])


def test_an_unknown_prompt_on_a_whole_conversation_is_only_a_label(
    oai: openai.OpenAI, gateway: GatewayThread
) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="prompted", messages=HELLO, extra_headers=headers("in-code-prompt@4")
    )
    assert raw.parse().choices[0].message.content
    event = stored(gateway, raw.headers["x-request-id"])
    assert (event.prompt_name, event.prompt_version) == ("in-code-prompt", 4)
    assert json.loads(event.input_text) == HELLO  # sent as the caller wrote it


def test_a_prompt_without_an_active_version_says_how_to_fix_it(oai: openai.OpenAI, store: Store) -> None:
    registry.create_prompt(store.engine, "draft", actor="tests")
    registry.add_version(store.engine, "draft", template="USER<draft>", actor="tests")

    def conflict() -> bool:
        try:
            oai.chat.completions.create(model="prompted", messages=[], extra_headers=headers("draft", {}))
        except openai.ConflictError as exc:
            return "no active version yet" in exc.message
        except openai.NotFoundError:
            return False  # the gateway has not seen the new prompt yet
        return False

    wait_for(conflict, what="the gateway to know the draft prompt")
    # A pinned version works before any promotion (the A/B lab runs versions that are not live).
    out = oai.chat.completions.create(model="prompted", messages=[], extra_headers=headers("draft@1", {}))
    assert out.choices[0].message.content  # the simulator's filler: no rule matches "USER<draft>" alone


# --- the Anthropic SDK ------------------------------------------------------------------------------


def test_anthropic_sdk_gets_the_rendered_prompt(gateway: GatewayThread) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="not-a-provider-key", max_retries=0)
    try:
        msg = client.messages.create(
            model="prompted", max_tokens=200, messages=[], extra_headers=headers(variables=TICKET)
        )
    finally:
        client.close()
    assert "".join(b.text for b in msg.content if b.type == "text") == f"terse|{v1()}|END"


# --- the library --------------------------------------------------------------------------------------


def test_library_prompt_keyword_renders_active_and_pinned_versions(store: Store) -> None:
    async def main() -> tuple[Any, ...]:
        async with Gateway(store) as gw:
            active = await gw.chat(route="prompted", prompt=PROMPT, prompt_vars=TICKET)
            pinned = await gw.chat(route="prompted", prompt=f"{PROMPT}@2", prompt_vars=TICKET)
            parts = []
            async for item in gw.stream(route="prompted", prompt=PROMPT, prompt_vars=TICKET):
                if isinstance(item, TextDelta):
                    parts.append(item.text)
                elif isinstance(item, GatewayStreamEnd):
                    streamed = item.response
            with pytest.raises(GatewayError) as missing:
                await gw.chat(route="prompted", prompt=PROMPT, prompt_vars={})
            return active, pinned, "".join(parts), streamed, missing.value

    active, pinned, text, streamed, missing = asyncio.run(main())
    assert active.result.text == f"terse|{v1()}|END"
    assert (active.event.prompt_name, active.event.prompt_version) == (PROMPT, 1)
    assert pinned.result.text == "plain|v2 Printer on fire in 12 words"
    assert pinned.event.prompt_version == 2
    assert text == f"terse|{v1()}|END" and streamed.event.prompt_version == 1
    assert missing.failure is Failure.CLIENT_ERROR and missing.status_code == 400
    assert "needs the variables tone, ticket" in missing.message


def test_a_gateway_without_a_store_says_prompts_live_in_one(
    sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-prompts-0123456789")

    async def main() -> GatewayError:
        async with Gateway(None, config=parse_config(config_text(sim))) as gw:
            with pytest.raises(GatewayError) as info:
                await gw.chat(route="default", prompt=PROMPT, prompt_vars=TICKET)
            return info.value

    err = asyncio.run(main())
    assert err.status_code == 404 and "prompts live in it" in err.message
    assert err.event.prompt_name == PROMPT


def test_library_refuses_a_bad_prompt_reference() -> None:
    async def main() -> None:
        async with Gateway(None, config=ControlConfig()) as gw:
            await gw.chat(route="x", prompt="bad name@1")

    with pytest.raises(ValueError, match="not valid"):
        asyncio.run(main())


# --- promote and roll back while traffic runs -------------------------------------------------------


def test_promote_then_roll_back_while_traffic_runs(
    oai: openai.OpenAI, gateway: GatewayThread, store: Store
) -> None:
    seen: list[tuple[str, str]] = []  # (answer, event id) in the order the answers came back
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        try:
            while not stop.is_set():
                raw = oai.chat.completions.with_raw_response.create(
                    model="prompted", messages=[], extra_headers=headers(variables=TICKET)
                )
                seen.append((raw.parse().choices[0].message.content or "", raw.headers["x-request-id"]))
        except BaseException as exc:
            errors.append(exc)

    def answers_from(version: str) -> bool:
        return bool(seen) and f"|{version} " in seen[-1][0]

    worker = threading.Thread(target=traffic, name="controlroom-prompt-traffic")
    worker.start()
    try:
        wait_for(lambda: answers_from("v1"), what="traffic on v1")
        registry.set_active_version(store.engine, PROMPT, 2, actor="ana", reason="v2 wins the A/B")
        wait_for(lambda: answers_from("v2"), what="the promotion to reach the gateway")
        assert registry.rollback_target(store.engine, PROMPT) == 1
        registry.set_active_version(store.engine, PROMPT, 1, actor="ana", reason="v2 cuts answers short")
        wait_for(lambda: answers_from("v1"), what="the rollback to reach the gateway")
    finally:
        stop.set()
        worker.join(30)
    assert errors == []
    versions = [1 if "|v1 " in answer else 2 for answer, _ in seen]
    # v1, then v2, then v1 again: each switch happens once, no request mixes versions.
    switches = [b for a, b in itertools.pairwise(versions) if a != b]
    assert switches == [2, 1]
    for (answer, _event_id), version in zip(seen, versions, strict=True):
        expected = f"terse|{v1()}|END" if version == 1 else "plain|v2 Printer on fire in 12 words"
        assert answer == expected
    for (_, event_id), version in list(zip(seen, versions, strict=True))[-3:]:
        assert stored(gateway, event_id).prompt_version == version
    actions = [a.action for a in control.list_audit(store.engine, object_type="prompt", limit=2)]
    assert actions == ["rollback", "promote"]
