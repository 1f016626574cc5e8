"""Turns the chaos suite's JSON summary (tests/test_chaos.py, K2_CHAOS_SUMMARY) into the results section of
docs/reliability.md: the run, the machine, a table per fault and one per round.

Usage: chaos_report.py SUMMARY_JSON DOC_MD
Replaces what lies between the doc's `<!-- chaos-results:start -->` and `<!-- chaos-results:end -->` lines.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

START = "<!-- chaos-results:start -->"
END = "<!-- chaos-results:end -->"


def seconds(values: list[float]) -> str:
    """median / max of a list of durations."""
    return f"{statistics.median(values):.1f} / {max(values):.1f}" if values else "–"


def row(*cells: object) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def table(header: list[str], rows: list[str]) -> list[str]:
    return [row(*header), row(*["---"] * len(header)), *rows]


def render(summary: dict[str, Any]) -> str:
    machine, rounds, startup = summary["machine"], summary["rounds"], summary["startup_seconds"]
    failed = [r for r in rounds if r["failures"]]
    seed = summary["seed"]
    outcome = "**no failure**." if not failed else f"**{len(failed)} round(s) failed** (below)."
    load = " / ".join(map(str, machine["load_average_at_start"]))
    subscribers = "; ".join(
        f"subscriber `{name}` received {s['received']:,} trades and reconnected {s['reconnects']} times"
        for name, s in summary["subscribers"].items()
    )
    lines = [
        (
            f"Run of `make chaos` started {summary['started']}, seed {seed} (`K2_CHAOS_SEED={seed} make chaos` "
            f"repeats its choices): {len(rounds)} rounds, {summary['published']:,} trades published and "
            f"acknowledged, {outcome}"
        ),
        "",
        (
            f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB, "
            f"{machine['system']}, Python {machine['python']}; load average {load} at the start (the machine is "
            "shared with other work). "
            f"Start-up: the 3-broker cluster {startup.get('kafka_cluster', 0):.0f} s; ingest "
            f"{startup.get('ingest', 0):.0f} s, writer {startup.get('writer', 0):.0f} s, query "
            f"{startup.get('query', 0):.0f} s (started together)."
        ),
        "",
        (
            f"At the end the trades topic held {summary['kafka_duplicate_messages']} duplicate message(s); "
            f"{subscribers}; ingest answered {summary['duplicate_batches']} re-sent batch(es) as duplicates."
        ),
        "",
        "Per fault (durations in seconds, median / max over its rounds):",
        "",
    ]
    by_fault: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rounds:
        by_fault[r["fault"]].append(r)

    def durations(group: list[dict[str, Any]], name: str) -> str:
        return seconds([r[name] for r in group])

    lines += table(
        [
            "fault",
            "rounds",
            "trades published",
            "down",
            "back serving",
            "longest publish stall",
            "Iceberg caught up",
            "subscribers caught up",
            "subscriber reconnects",
            "publisher re-sends",
            "re-sent trades not written again",
            "failures",
        ],
        [
            row(
                fault,
                len(group),
                f"{sum(r['published'] for r in group):,}",
                durations(group, "down_seconds"),
                durations(group, "restart_seconds"),
                durations(group, "longest_publish_stall_seconds"),
                durations(group, "iceberg_catch_up_seconds"),
                durations(group, "subscriber_catch_up_seconds"),
                sum(r["subscriber_reconnects"] for r in group),
                sum(r["publisher_resends"] for r in group),
                sum(r["resent_items_not_rewritten"] for r in group),
                sum(len(r["failures"]) for r in group),
            )
            for fault, group in sorted(by_fault.items())
        ],
    )
    lines += ["", "Every round (seconds):", ""]
    lines += table(
        [
            "#",
            "fault",
            "target",
            "at",
            "down",
            "back",
            "stall",
            "published",
            "in Iceberg",
            "Iceberg caught up",
            "subscribers caught up",
            "reconnects",
            "re-sends",
            "not written again",
            "replicas in sync",
        ],
        [
            row(
                r["number"],
                r["fault"],
                r["target"],
                r["fault_at_seconds"],
                r["down_seconds"],
                r["restart_seconds"],
                r["longest_publish_stall_seconds"],
                f"{r['published']:,}",
                f"{r['iceberg_rows']:,}",
                r["iceberg_catch_up_seconds"],
                r["subscriber_catch_up_seconds"],
                r["subscriber_reconnects"],
                r["publisher_resends"],
                r["resent_items_not_rewritten"],
                r["replicas_in_sync_seconds"],
            )
            for r in rounds
        ],
    )
    if failed:
        lines += ["", "Failures:", ""]
        lines += [
            f"- round {r['number']} ({r['fault']}): {failure}" for r in failed for failure in r["failures"]
        ]
    return "\n".join(lines)


def main() -> int:
    summary_path, doc_path = Path(sys.argv[1]), Path(sys.argv[2])
    doc = doc_path.read_text()
    if START not in doc or END not in doc:
        print(f"{doc_path} has no {START} … {END} section", file=sys.stderr)
        return 1
    before, rest = doc.split(START, 1)
    after = rest.split(END, 1)[1]
    doc_path.write_text(f"{before}{START}\n{render(json.loads(summary_path.read_text()))}\n{END}{after}")
    print(f"{doc_path}: results of {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
