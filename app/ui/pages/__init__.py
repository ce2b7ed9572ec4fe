"""The pages of the navigation rail, in rail order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageSpec:
    key: str
    title: str
    purpose: str
    next_step: str


PAGES: tuple[PageSpec, ...] = (
    PageSpec(
        "overview",
        "Overview",
        "Requests/s, p95 latency, error rate, cost today against budget, cache hit rate "
        "and open breakers, each with a sparkline and its change against the previous period.",
        "No traffic yet — start the demo (controlroom ui --demo), or add a source.",
    ),
    PageSpec(
        "traffic",
        "Traffic",
        "Live and historical charts on one time axis: requests/s, latency p50/p95/p99 and "
        "time to first token, cost against budget, failures stacked by type, tokens in and out, cache hits.",
        "Charts appear as soon as events arrive from the gateway or a source.",
    ),
    PageSpec(
        "breakers",
        "Breakers",
        "Every target with its breaker state (closed, open, half-open; auto or forced), "
        "failure rate and requests in the window, and a timeline of transitions with their causes.",
        "Targets appear once a config with targets is applied (controlroom config apply FILE.yaml).",
    ),
    PageSpec(
        "routing",
        "Routing",
        "Routes with ordered rules, fallback chains and weighted canaries; per-route "
        "deadline, timeouts, retries, cache and output cap, validated and dry-run before saving.",
        "Apply a config file, or add a route here once the editor lands.",
    ),
    PageSpec(
        "budgets",
        "Budgets",
        "Budgets by scope and period with limits, warning levels and actions; spend so far, "
        "the projection at the current burn rate, and the warnings already fired.",
        "Add a budget in a config file (budgets:) and apply it.",
    ),
    PageSpec(
        "experiments",
        "Experiments",
        "Prompt A/B tests: variants, datasets and checks, a runner within rate "
        "limits, pass rates with confidence intervals and a verdict in plain words.",
        "Run an experiment file headless with controlroom ab run FILE.yaml.",
    ),
    PageSpec(
        "prompts",
        "Prompts",
        "Versioned prompts with diffs between versions, the active version per prompt, "
        "promote and roll back.",
        "Prompts appear when they are added to the registry.",
    ),
    PageSpec(
        "events",
        "Events",
        "Every request as one row: searchable, sortable, with outlier presets and a detail "
        "panel showing the attempts, targets tried and sanitized text.",
        "Events appear as soon as traffic is recorded.",
    ),
    PageSpec(
        "sources",
        "Sources",
        "Log sources — JSONL files, OTLP/HTTP, remote endpoints, provider usage APIs — "
        "with live status and the quarantined records with their reasons.",
        "Ingest a file now with controlroom ingest PATH.",
    ),
    PageSpec(
        "providers",
        "Providers",
        "OpenAI, Anthropic and OpenAI-compatible providers with keys in the OS keyring, "
        "a connection test, price overrides and rate limits.",
        "Store a key with controlroom keys set PROVIDER.",
    ),
    PageSpec(
        "alerts",
        "Alerts",
        "Alert rules on latency percentiles, error rates by type, cost spikes, budget levels "
        "and quality drift, shown here and as desktop notifications.",
        "Alert rules will be configured here.",
    ),
    PageSpec(
        "audit",
        "Audit",
        "Every control change: who, when, what (before and after) and why; filterable, "
        "exportable, and the last change to an object can be reverted.",
        "Changes appear here as soon as anything is configured.",
    ),
)

PAGE_KEYS: tuple[str, ...] = tuple(p.key for p in PAGES)


def page_spec(key: str) -> PageSpec:
    for spec in PAGES:
        if spec.key == key:
            return spec
    raise KeyError(f"no page named {key!r}; pages are: {', '.join(PAGE_KEYS)}")
