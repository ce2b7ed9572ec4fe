"""Control state in a real store: ``controlroom config apply|export`` and ``controlroom breaker``.

Validated whole, every problem as FILE:LINE, nothing half-applied, literal secrets refused without
being repeated, export -> apply a no-op and apply -> export lossless, every change audited with
a version bump; on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import getpass
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.core.breaker import BreakerSettings
from app.core.config import ControlConfig, parse_config
from app.gateway import control
from storage.engine import open_store
from storage.queries import control as q

FULL = """\
providers:
  - name: openai-main
    kind: openai
    base_url: http://127.0.0.1:8700/v1
    api_key: env:OPENAI_API_KEY
    admin_key: keyring
    rate_limits: {rpm: 500, tpm: 200000}
  - name: anthropic-main
    kind: anthropic
    base_url: http://127.0.0.1:8700
    api_key: keyring
  - name: local
    kind: openai_compatible
    base_url: http://127.0.0.1:11434/v1
    api_key: none
targets:
  - {name: fast, provider: openai-main, model: gpt-4o-mini}
  - name: strong
    provider: anthropic-main
    model: claude-sonnet-4-5
    price: {input_per_mtok: 3.0, output_per_mtok: 15.0, cache_read_per_mtok: 0.3}
  - {name: llama, provider: local, model: llama3.1}
routes:
  - name: default
    deadline_s: 20
    first_token_timeout_s: 8
    attempt_timeout_s: 9
    retry: {max_attempts: 2, base_s: 0.25, cap_s: 4, max_retry_after_s: 30}
    cache: {exact_ttl_s: 600, allow_nonzero_temperature: true}
    max_output_tokens: 1024
    on_all_open: try_anyway
    store_text: true
    latency_aware: true
    fallback_response: "Sorry, try again later."
    rules:
      - when: {input_tokens_over: 4000}
        chain: [strong, fast]
      - when: {feature: search, tier: [gold, silver]}
        chain: [{split: {fast: 90, strong: 10}, sticky: user}, strong]
      - when: {hours: {from: 22, to: 6, tz: Europe/Paris}}
        chain: [llama, fast]
      - chain: [fast, strong]
  - name: batch
    rules:
      - chain: [llama]
breakers:
  default: {window_s: 60, min_requests: 10, failure_rate: 0.4, slow_rate: 0.9, open_for_s: 20,
            max_open_for_s: 600, probe_requests: 2}
  targets:
    strong: {min_requests: 5, open_for_s: 10}
budgets:
  - name: search-daily
    scope: {feature: search}
    period: day
    timezone: Europe/Paris
    limit_usd: 100
    warn_at: [0.5, 0.9]
    action: downgrade
    downgrade_to: [llama]
  - name: tokens-hourly
    scope: {}
    period: rolling_1h
    limit_tokens: 2000000
    action: block
"""


def _by_name(cfg: ControlConfig) -> dict[str, Any]:
    """The objects of a config, order aside (export sorts by name; order carries no meaning)."""
    return {
        "providers": {p.name: p for p in cfg.providers},
        "targets": {t.name: t for t in cfg.targets},
        "routes": {r.name: r for r in cfg.routes},
        "budgets": {b.name: b for b in cfg.budgets},
        "breakers": cfg.breakers,
    }


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'control.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def full_file(tmp_path: Path) -> Path:
    path = tmp_path / "control.yaml"
    path.write_text(FULL, encoding="utf-8")
    return path


def _version(url: str) -> int:
    with open_store(url) as s:
        return q.get_control_version(s.engine)


# --- apply and export -----------------------------------------------------------------------------


def test_apply_then_export_is_lossless_and_reapplying_the_export_changes_nothing(
    capsys: pytest.CaptureFixture[str], store_url: str, full_file: Path, tmp_path: Path
) -> None:
    code, out, err = _cli(
        capsys, "config", "apply", str(full_file), "--store", store_url, "--reason", "first"
    )
    assert code == 0, err
    assert "applied" in out and "create  route default" in out and "control version 0 ->" in out
    code, exported, err = _cli(capsys, "config", "export", "--store", store_url)
    assert code == 0, err
    assert _by_name(parse_config(exported, "export.yaml")) == _by_name(parse_config(FULL, "control.yaml"))
    assert exported.startswith("# Control Room configuration, exported at control version")
    # The breaker defaults came back too (the store keeps them in the audit log).
    with open_store(store_url) as s:
        assert control.stored_breaker_defaults(s) == BreakerSettings(
            window_s=60, min_requests=10, failure_rate=0.4, slow_rate=0.9, open_for_s=20, max_open_for_s=600,
            probe_requests=2,
        )  # fmt: skip
    version = _version(store_url)
    again = tmp_path / "exported.yaml"
    assert _cli(capsys, "config", "export", "--store", store_url, "-o", str(again))[0] == 0
    code, out, _ = _cli(capsys, "config", "apply", str(again), "--store", store_url)
    assert code == 0 and out.startswith("nothing to change")
    code, out, _ = _cli(capsys, "config", "apply", str(full_file), "--store", store_url)
    assert code == 0 and out.startswith("nothing to change")
    assert _version(store_url) == version


def test_every_change_is_audited_and_bumps_the_version(
    capsys: pytest.CaptureFixture[str], store_url: str, full_file: Path, tmp_path: Path
) -> None:
    assert _cli(capsys, "config", "apply", str(full_file), "--store", store_url, "--reason", "v1")[0] == 0
    with open_store(store_url) as s:
        rows = q.list_audit(s.engine, limit=100)
        # 3 providers, 3 targets, 2 routes, 2 budgets and the breaker defaults.
        assert len(rows) == 11 and q.get_control_version(s.engine) == 11
        assert {r.actor for r in rows} == {getpass.getuser()}
        assert {r.reason for r in rows} == {f"config apply {full_file}: v1"}
        created = {(r.object_type, r.object_name) for r in rows if r.action == "create"}
        assert ("route", "default") in created and ("provider", "local") in created
        assert all(r.before is None and r.after for r in rows if r.action == "create")
    changed = tmp_path / "changed.yaml"
    changed.write_text(FULL.replace("deadline_s: 20", "deadline_s: 12"), encoding="utf-8")
    code, out, _ = _cli(capsys, "config", "apply", str(changed), "--store", store_url, "--reason", "faster")
    assert code == 0
    assert "update  route default" in out and "1 changed" in out
    with open_store(store_url) as s:
        (last,) = q.list_audit(s.engine, limit=1)
        assert (last.action, last.object_type, last.object_name) == ("update", "route", "default")
        assert last.before["settings"]["deadline_s"] == 20 and last.after["settings"]["deadline_s"] == 12
        assert last.reason == f"config apply {changed}: faster"
        assert q.get_control_version(s.engine) == 12


def test_objects_the_file_does_not_name_are_deleted_and_the_output_says_so(
    capsys: pytest.CaptureFixture[str], store_url: str, full_file: Path, tmp_path: Path
) -> None:
    assert _cli(capsys, "config", "apply", str(full_file), "--store", store_url)[0] == 0
    small = tmp_path / "small.yaml"
    small.write_text(
        """\
providers:
  - {name: openai-main, kind: openai, base_url: "http://127.0.0.1:8700/v1", api_key: env:OPENAI_API_KEY,
     admin_key: keyring, rate_limits: {rpm: 500, tpm: 200000}}
targets:
  - {name: fast, provider: openai-main, model: gpt-4o-mini}
routes:
  - name: default
    rules:
      - chain: [fast]
""",
        encoding="utf-8",
    )
    code, out, _ = _cli(capsys, "config", "apply", str(small), "--store", store_url, "--dry-run")
    assert code == 0 and out.startswith("dry run")
    assert "delete  provider local  (not in the file: the file is the truth)" in out
    with open_store(store_url) as s:
        assert len(q.list_objects(s.engine, "target")) == 3  # the dry run wrote nothing
    code, out, _ = _cli(capsys, "config", "apply", str(small), "--store", store_url)
    assert code == 0
    for gone in ("target strong", "target llama", "provider anthropic-main", "provider local", "route batch"):
        assert f"delete  {gone}  (not in the file" in out
    assert "update  route default" in out and "update  breaker_defaults default" in out
    with open_store(store_url) as s:
        cfg = control.load_config(s)
    assert _by_name(cfg) == _by_name(parse_config(small.read_text(), "small.yaml"))


# --- refusals ----------------------------------------------------------------------------------------

BROKEN = """\
providers:
  - name: p
    kind: openia
    api_key: keyring
targets:
  - {name: fast, provider: p, model: m}
  - {name: slow, provider: nobody, model: m}
routes:
  - name: default
    deadline_s: -3
    rules:
      - chain: [fast, fats]
"""


def test_every_problem_is_reported_as_file_line_and_nothing_changes(
    capsys: pytest.CaptureFixture[str], store_url: str, full_file: Path, tmp_path: Path
) -> None:
    assert _cli(capsys, "config", "apply", str(full_file), "--store", store_url)[0] == 0
    before = _version(store_url)
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN, encoding="utf-8")
    code, out, err = _cli(capsys, "config", "apply", str(broken), "--store", store_url)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    problems = [line for line in lines if line.startswith(f"{broken}:")]
    at = {int(line.split(":")[1]) for line in problems}
    assert {3, 7, 10, 12} <= at, err  # kind, unknown provider, negative deadline, unknown target
    assert "did you mean `fast`?" in err
    assert lines[-1].endswith("nothing in the store changed")
    assert _version(store_url) == before
    with open_store(store_url) as s:
        assert len(q.list_objects(s.engine, "provider")) == 3


def test_a_literal_key_is_refused_without_being_repeated(
    capsys: pytest.CaptureFixture[str], store_url: str, tmp_path: Path
) -> None:
    secret = "sk-proj-Abc123Def456Ghi789Jkl012Mno345"
    path = tmp_path / "leaky.yaml"
    path.write_text(
        f"providers:\n  - name: openai-main\n    kind: openai\n    api_key: {secret}\n", encoding="utf-8"
    )
    code, out, err = _cli(capsys, "config", "apply", str(path), "--store", store_url)
    assert code == 1
    assert f"{path}:4:" in err and "controlroom keys set openai-main" in err
    assert secret not in out + err and secret[:12] not in out + err
    assert _version(store_url) == 0


def test_nothing_is_half_applied_when_the_store_fails_midway(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = parse_config(FULL, "control.yaml")
    real_save = q.save_object
    calls = 0

    def failing_save(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 5:  # after providers and a target were written in the transaction
            raise RuntimeError("the disk is full (simulated)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(q, "save_object", failing_save)
    with open_store(store_url) as s:
        with pytest.raises(RuntimeError, match="simulated"):
            control.apply_config(s, cfg, actor="ana", source_file="control.yaml")
        assert calls == 5
        assert q.get_control_version(s.engine) == 0
        assert all(not q.list_objects(s.engine, kind) for kind in ("provider", "target", "route", "budget"))
        assert q.list_audit(s.engine) == []


# --- the breaker switch --------------------------------------------------------------------------------


def test_breaker_commands_force_open_closed_auto_with_expiry_and_audit(
    capsys: pytest.CaptureFixture[str], store_url: str, full_file: Path
) -> None:
    assert _cli(capsys, "config", "apply", str(full_file), "--store", store_url)[0] == 0
    code, _, err = _cli(capsys, "breaker", "open", "fast", "--store", store_url)
    assert code == 1 and "needs a reason" in err
    code, _, err = _cli(capsys, "breaker", "open", "fsat", "--reason", "x", "--store", store_url)
    assert code == 1 and "no target named `fsat`" in err and "did you mean `fast`?" in err
    code, _, err = _cli(
        capsys, "breaker", "open", "fast", "--reason", "x", "--for", "soon", "--store", store_url
    )
    assert code == 1 and "not a duration" in err

    t0 = time.time()
    code, out, err = _cli(
        capsys,
        "breaker",
        "open",
        "fast",
        "--reason",
        "provider incident",
        "--for",
        "15m",
        "--store",
        store_url,
    )
    assert code == 0, err
    assert "breaker fast: force_open until" in out
    with open_store(store_url) as s:
        (override,) = q.list_breaker_overrides(s.engine)
        assert (override.target, override.state, override.reason) == (
            "fast",
            "force_open",
            "provider incident",
        )
        assert override.actor == getpass.getuser()
        assert override.expires_at is not None and 899 <= override.expires_at - t0 <= 905
    code, out, _ = _cli(capsys, "breaker", "list", "--store", store_url)
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("fast\t"))
    assert "force_open" in row and "provider incident" in row
    assert (
        _cli(capsys, "breaker", "close", "strong", "--reason", "probe by hand", "--store", store_url)[0] == 0
    )
    assert _cli(capsys, "breaker", "auto", "fast", "--store", store_url)[0] == 0
    assert (
        _cli(
            capsys,
            "breaker",
            "open",
            "ghost",
            "--reason",
            "code-only",
            "--allow-unknown",
            "--store",
            store_url,
        )[0]
        == 0
    )
    with open_store(store_url) as s:
        active = {o.target: o.state for o in q.list_breaker_overrides(s.engine)}
        assert active == {"strong": "force_closed", "ghost": "force_open"}
        audit = q.list_audit(s.engine, object_type="breaker", limit=10)
        assert [(a.object_name, a.action) for a in audit] == [
            ("ghost", "force_open"),
            ("fast", "auto"),
            ("strong", "force_closed"),
            ("fast", "force_open"),
        ]
        assert audit[1].before["state"] == "force_open" and audit[1].reason == "back to automatic"
        statuses = {b.target: b for b in control.list_breakers(s)}
        assert statuses["ghost"].in_store is False and statuses["llama"].override is None


def test_parse_duration() -> None:
    assert control.parse_duration("90s") == 90
    assert control.parse_duration("15m") == 900
    assert control.parse_duration("1h30m") == 5400
    assert control.parse_duration("2d") == 172800
    assert control.parse_duration("250ms") == 0.25
    assert control.parse_duration("45") == 45
    for bad in ("", "0s", "-5m", "15 minutes", "m15", "inf"):
        with pytest.raises(control.ControlError):
            control.parse_duration(bad)


def test_the_store_side_mapping_keeps_key_references_as_references(store_url: str) -> None:
    with open_store(store_url) as s:
        control.apply_config(s, parse_config(FULL, "control.yaml"), actor="ana")
        rows = {r["name"]: r for r in q.list_objects(s.engine, "provider")}
    assert rows["anthropic-main"]["api_key_ref"] == "keyring:controlroom/anthropic-main"
    assert rows["openai-main"]["api_key_ref"] == "env:OPENAI_API_KEY"
    assert rows["local"]["api_key_ref"] == "none"


def test_two_applies_at_once_are_serialized_not_interleaved(store_url: str) -> None:
    first = parse_config(FULL, "a.yaml")
    second = parse_config(FULL.replace("deadline_s: 20", "deadline_s: 11"), "b.yaml")
    errors: list[BaseException] = []

    def apply(cfg: ControlConfig, who: str) -> None:
        try:
            with open_store(store_url) as s:
                control.apply_config(s, cfg, actor=who)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=apply, args=(c, w)) for c, w in ((first, "ana"), (second, "bo"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with open_store(store_url) as s:
        final = control.load_config(s)
        route = final.route("default")
        assert route is not None and route.deadline_s in (20, 11)
        # Whoever went second changed exactly the route (the first created everything).
        audit = q.list_audit(s.engine, limit=100)
        assert len(audit) == 12 and audit[0].object_name == "default"
