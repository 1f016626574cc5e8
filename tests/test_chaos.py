"""The chaos suite: faults on a real 3-broker cluster and on the services, each in rounds at random moments, and
after every round the end-to-end guarantees (see chaos_harness). `make test` runs one round of each fault;
`make chaos` several (K2_CHAOS_ROUNDS), writing a JSON summary (K2_CHAOS_SUMMARY) that
scripts/chaos_report.py turns into docs/reliability.md. K2_CHAOS_SEED repeats a run's random choices."""

import json
import os
import random
from pathlib import Path

import pytest
from chaos_harness import FAULTS, chaos_platform, log

ROUNDS = int(os.environ.get("K2_CHAOS_ROUNDS", "1"))
SEED = int(os.environ.get("K2_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
SUMMARY = os.environ.get("K2_CHAOS_SUMMARY")
# Start-up (cluster and services), then each round: publishing, the fault, its recovery and the checks.
SECONDS_PER_ROUND = 240


@pytest.mark.chaos
@pytest.mark.timeout(600 + SECONDS_PER_ROUND * ROUNDS * len(FAULTS))
def test_every_fault_loses_duplicates_and_reorders_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    log(f"seed {SEED} (K2_CHAOS_SEED={SEED} repeats this run), {ROUNDS} round(s) of each fault")
    with chaos_platform(tmp_path_factory.mktemp("chaos"), SEED) as chaos:
        schedule = [fault for _ in range(ROUNDS) for fault in chaos.rng.sample(FAULTS, len(FAULTS))]
        results = [chaos.run_round(number, fault) for number, fault in enumerate(schedule, start=1)]
        summary = chaos.summary(results, chaos.kafka_duplicates())
    if SUMMARY:
        Path(SUMMARY).parent.mkdir(parents=True, exist_ok=True)
        Path(SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    failures = [
        f"round {r.number} ({r.fault} of {r.target}): {failure}" for r in results for failure in r.failures
    ]
    assert not failures, f"seed {SEED}:\n" + "\n".join(failures)
