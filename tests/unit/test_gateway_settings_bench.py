"""benchmarks/gateway_settings.py's pure parts: the hook changes only LiteLLM, by exactly the
variant's setting, and the paired per-round gain cancels drift shared by every stack."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from llmstack import initialize, names, plan, render, secrets, spec

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gateway_settings as bench
import http_load


def desired() -> list[plan.ServiceSpec]:
    stack = spec.parse(initialize.starter())
    return plan.desired(stack, render.render(stack), secrets.new_key())


def test_a_variant_changes_only_litellm_and_only_its_setting() -> None:
    before = desired()
    variant = bench.Variant("test", env={"DISABLE_AIOHTTP_TRANSPORT": "True"},
                            options={"--num_workers": "2"},
                            settings={"disable_streaming_logging": True}, image="x/litellm:t")
    litellm = next(s for s in before if s.service == names.LITELLM)
    after = bench.changed(litellm, variant)

    assert after.env == {**litellm.env, "DISABLE_AIOHTTP_TRANSPORT": "True"}
    i = after.command.index("--num_workers")
    assert after.command[i + 1] == "2" and len(after.command) == len(litellm.command)
    config = yaml.safe_load(after.config["litellm.yaml"])
    assert config["litellm_settings"]["disable_streaming_logging"] is True
    assert config["model_list"] == yaml.safe_load(litellm.config["litellm.yaml"])["model_list"]
    assert after.image == "x/litellm:t"
    assert bench.changed(litellm, bench.VARIANTS["baseline"]) == litellm


def test_paired_gain_cancels_drift_that_every_stack_shares() -> None:
    got = http_load.Collected()
    for drift in (0.0, 0.5, 0.1):  # a slow round hits every stack alike
        got.add(http_load.Sample("baseline", 0.100 + drift, 200))
        got.add(http_load.Sample("baseline_again", 0.101 + drift, 200))
        got.add(http_load.Sample("fast", 0.090 + drift, 200))
    rounds = {n: bench.by_round(got, n, 3) for n in ("baseline", "baseline_again", "fast")}
    assert bench.paired(rounds, "fast", list(bench.BASELINES)) == 10.5
    assert bench.paired(rounds, "baseline_again", ["baseline"]) == -1.0
