"""Prompt registry use, A/B runner, evaluators, reports."""
