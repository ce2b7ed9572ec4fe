"""Shared set-up for the A/B lab's tests: a store wired to the simulator, and a scenario that grades."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.core.config import parse_config
from app.gateway.control import apply_config
from app.sim import SimServer
from storage.engine import Store, open_store

KEY_ENV = "AB_SIM_KEY"

# The instant scenario plus rules: a judge that answers JSON, and a capital the prompts can ask for.
GRADING_SCENARIO: dict[str, Any] = {
    "name": "ab-grading",
    "defaults": {"ttft": 0, "tokens_per_s": 0},
    "models": {
        "gpt-4o-mini": {"provider": "openai"},
        "gpt-4o": {"provider": "openai"},
        "claude-sonnet-4-5": {"provider": "anthropic"},
    },
    "answers": {
        "default_tokens": 24,
        "rules": [
            {"match": "You are grading", "json": {"score": 4, "reasoning": "faithful and short"}},
            {"match": "(?i)capital of france", "answer": "The capital of France is Paris."},
        ],
    },
}


def sim_store(sim: SimServer, path: Path | str, *, rpm: int | None = None) -> Store:
    """A store (a SQLite file, or any store URL) whose providers are the simulator's two faces, with
    targets fast, big and strong."""
    limits = f", rate_limits: {{rpm: {rpm}}}" if rpm else ""
    store = open_store(path if isinstance(path, str) else f"sqlite:///{path}")
    cfg = parse_config(
        f"""
providers:
  - {{name: sim-openai, kind: openai, base_url: "{sim.openai_base_url}", api_key: env:{KEY_ENV}{limits}}}
  - {{name: sim-anthropic, kind: anthropic, base_url: "{sim.anthropic_base_url}", api_key: env:{KEY_ENV}}}
targets:
  - {{name: fast, provider: sim-openai, model: gpt-4o-mini}}
  - {{name: big, provider: sim-openai, model: gpt-4o}}
  - {{name: strong, provider: sim-anthropic, model: claude-sonnet-4-5}}
"""
    )
    apply_config(store, cfg, actor="test", reason="A/B test set-up", source_file="test")
    return store


def experiment_yaml(
    *, cases: int = 12, gate: str = "", repeat: int = 1, judge: bool = False, name: str = "capitals"
) -> str:
    lines = [
        f"name: {name}",
        "prompts:",
        "  - id: v1",
        '    template: "What is the capital of France? Ticket: {{ticket}}"',
        "  - id: v2",
        '    template: "Write a line about {{ticket}}"',
        "targets: [fast]",
        "baseline: v1",
        f"repeat: {repeat}",
        "concurrency: 4",
        "tests:",
    ]
    for i in range(cases):
        lines += [f"  - vars: {{ticket: 'ticket {i}'}}"]
    lines += [
        "defaults:",
        "  assert:",
        "    - type: icontains",
        "      value: paris",
        "    - {type: max_length, value: 400}",
    ]
    if judge:
        lines += [
            "    - type: llm_judge",
            "      rubric: Is it right? Score 1-5.",
            "      target: strong",
            "      pass_at: 3",
        ]
    if gate:
        lines += ["gate:", *[f"  {g}" for g in gate.strip().splitlines()]]
    return "\n".join(lines) + "\n"


def chat_calls(sim: SimServer) -> int:
    return sum(1 for r in sim.served.records() if r.endpoint in ("chat.completions", "messages"))
