#!/usr/bin/env python3
"""Summarise a kosoku (Autobahn TestSuite) run and gate it against a baseline.

Reads DIR/index.json written by `kosoku -o DIR` ({agent: {case_id: {"behavior",
"behaviorClose", "reportfile", ...}}}), writes DIR/results.txt as lines
`<case-id> <BEHAVIOR> <BEHAVIOR_CLOSE>` sorted numerically by case id, prints
counts, and exits 1 when:

  * a case's behavior is FAILED or ERROR (ERROR = kosoku could not run it),
  * a case's close behavior is FAILED or UNCLEAN,
  * a case outside 12.* / 13.* (permessage-deflate) is UNIMPLEMENTED,
  * a case got worse than in the baseline (expected.txt), or is missing,
  * fewer cases ran than --min-cases or than the baseline lists.

Cases that got better than the baseline only warn. With --update, the baseline
is rewritten from this run (refused while any of the hard failures above holds).

Python 3.11 stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

# Lower rank is better. Labels with spaces are written with underscores.
BEHAVIOR_RANK = {
    "OK": 0,
    "INFORMATIONAL": 0,  # decided by the case, not the peer: as good as OK
    "NON-STRICT": 1,
    "UNIMPLEMENTED": 2,
    "NO_CLOSE": 3,
    "FAILED": 4,
    "ERROR": 5,
}
CLOSE_RANK = {
    "OK": 0,
    "INFORMATIONAL": 0,
    "WRONG_CODE": 1,
    "FAILED_BY_CLIENT": 1,
    "UNCLEAN": 2,
    "FAILED": 3,
}
HARD_BEHAVIOR = {"FAILED", "ERROR", "NO_CLOSE"}
HARD_CLOSE = {"FAILED", "UNCLEAN"}
MAY_BE_UNIMPLEMENTED = ("12.", "13.")  # permessage-deflate
UNKNOWN_RANK = 99


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 10**9 for p in case_id.split("."))


def norm(label: str | None) -> str:
    return (label or "NONE").strip().upper().replace(" ", "_")


def load_run(outdir: str) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Return ({case_id: (behavior, close)}, {case_id: per-case report path})."""
    index_path = os.path.join(outdir, "index.json")
    with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    results: dict[str, tuple[str, str]] = {}
    reports: dict[str, str] = {}
    # One agent per run (the peer's Server header, or the address if none).
    for agent_cases in index.values():
        for case_id, entry in agent_cases.items():
            results[case_id] = (norm(entry.get("behavior")), norm(entry.get("behaviorClose")))
            if entry.get("reportfile"):
                reports[case_id] = os.path.join(outdir, entry["reportfile"])
    return results, reports


def load_expected(path: str) -> dict[str, tuple[str, str]]:
    expected: dict[str, tuple[str, str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) not in (2, 3):
                sys.exit(f"{path}:{lineno}: expected `<case-id> <BEHAVIOR> [<BEHAVIOR_CLOSE>]`, got {raw!r}")
            expected[parts[0]] = (norm(parts[1]), norm(parts[2]) if len(parts) == 3 else "")
    return expected


def write_results(path: str, results: dict[str, tuple[str, str]], header: list[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for h in header:
            f.write(f"# {h}\n")
        for case_id in sorted(results, key=case_key):
            b, c = results[case_id]
            f.write(f"{case_id} {b} {c}\n")
    os.replace(tmp, path)


def hard_failure(case_id: str, behavior: str, close: str) -> str | None:
    if behavior in HARD_BEHAVIOR:
        return f"behavior {behavior}"
    if behavior not in BEHAVIOR_RANK:
        return f"unknown behavior {behavior}"
    if close in HARD_CLOSE:
        return f"close behavior {close}"
    if close not in CLOSE_RANK:
        return f"unknown close behavior {close}"
    if behavior == "UNIMPLEMENTED" and not case_id.startswith(MAY_BE_UNIMPLEMENTED):
        return "UNIMPLEMENTED outside 12.*/13.* (permessage-deflate)"
    return None


def compare(old: tuple[str, str], new: tuple[str, str]) -> str:
    """'worse', 'better', 'changed' (same rank) or 'same'."""
    if old == new:
        return "same"
    db = BEHAVIOR_RANK.get(new[0], UNKNOWN_RANK) - BEHAVIOR_RANK.get(old[0], UNKNOWN_RANK)
    if old[1]:
        dc = CLOSE_RANK.get(new[1], UNKNOWN_RANK) - CLOSE_RANK.get(old[1], UNKNOWN_RANK)
    else:  # baseline line without a close column: judge the behavior only
        dc = 0
    if db > 0 or dc > 0:
        return "worse"
    if db < 0 or dc < 0:
        return "better"
    return "changed"


def _short(value: object, limit: int = 400) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def describe(case_id: str, report_path: str | None) -> list[str]:
    """Key facts from the per-case report: what was expected vs received."""
    if not report_path or not os.path.exists(report_path):
        return ["    (no per-case report)"]
    try:
        with open(report_path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        return [f"    (cannot read {report_path}: {e})"]
    out = [
        f"    description : {_short(d.get('description', ''))}",
        f"    expectation : {_short(d.get('expectation', ''))}",
        f"    result      : {_short(d.get('result', ''))}",
        f"    resultClose : {_short(d.get('resultClose', ''))}",
        f"    expected    : {_short(d.get('expected'))}",
        f"    received    : {_short(d.get('received'))}",
        f"    expectedClose: {_short(d.get('expectedClose'))}",
        "    close codes : local={} {!r} remote={} {!r}; wasClean={} notCleanReason={!r}".format(
            d.get("localCloseCode"), d.get("localCloseReason"),
            d.get("remoteCloseCode"), d.get("remoteCloseReason"),
            d.get("wasClean"), d.get("wasNotCleanReason"),
        ),
        f"    report      : {report_path[:-5] + '.html' if report_path.endswith('.json') else report_path}",
    ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", required=True, help="kosoku output dir (holds index.json)")
    ap.add_argument("--expected", required=True, help="baseline file (conformance/expected.txt)")
    ap.add_argument("--results", help="where to write results.txt (default: REPORTS/results.txt)")
    ap.add_argument("--min-cases", type=int, default=0, help="fail if fewer cases ran")
    ap.add_argument("--update", action="store_true", help="rewrite the baseline from this run")
    ap.add_argument("--details", type=int, default=30, help="print report details for this many failed cases")
    ap.add_argument("--header", action="append", default=[], help="comment line for the written files")
    args = ap.parse_args()

    results_path = args.results or os.path.join(args.reports, "results.txt")
    try:
        results, reports = load_run(args.reports)
    except FileNotFoundError:
        print(f"conformance: FAIL: {args.reports}/index.json not found: kosoku wrote no report "
              "(did it crash or time out? see kosoku.log)", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"conformance: FAIL: cannot parse {args.reports}/index.json: {e}", file=sys.stderr)
        return 1

    header = args.header + ["<case-id> <BEHAVIOR> <BEHAVIOR_CLOSE> (spaces in kosoku's labels written as _)"]
    write_results(results_path, results, header)

    problems: list[str] = []
    warnings: list[str] = []

    # Counts.
    print(f"conformance: {len(results)} cases ran; results in {results_path}")
    for label, counter in (
        ("behavior", Counter(b for b, _ in results.values())),
        ("close behavior", Counter(c for _, c in results.values())),
    ):
        print(f"  {label}:")
        for name, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"    {name:<18} {n:4d}")

    # Hard failures.
    hard = []
    for case_id in sorted(results, key=case_key):
        why = hard_failure(case_id, *results[case_id])
        if why:
            hard.append((case_id, why))
    if hard:
        problems.append(f"{len(hard)} case(s) failed outright")
        print(f"\nFAILED cases ({len(hard)}):")
        for i, (case_id, why) in enumerate(hard):
            b, c = results[case_id]
            print(f"  {case_id}: {why} (behavior={b}, close={c})")
            if i < args.details:
                for line in describe(case_id, reports.get(case_id)):
                    print(line)
        if len(hard) > args.details:
            print(f"  (details shown for the first {args.details}; see the per-case reports for the rest)")

    # Case count.
    if len(results) < args.min_cases:
        problems.append(f"only {len(results)} cases ran, expected at least {args.min_cases}")

    # Baseline comparison.
    expected: dict[str, tuple[str, str]] = {}
    have_baseline = os.path.exists(args.expected)
    if have_baseline:
        expected = load_expected(args.expected)
    elif not args.update:
        warnings.append(f"no baseline at {args.expected}: run `scripts/conformance.sh --update` to create it")

    worse, better, changed = [], [], []
    missing = [c for c in expected if c not in results]
    new = [c for c in results if have_baseline and c not in expected]
    for case_id in sorted(set(expected) & set(results), key=case_key):
        verdict = compare(expected[case_id], results[case_id])
        if verdict == "worse":
            worse.append(case_id)
        elif verdict == "better":
            better.append(case_id)
        elif verdict == "changed":
            changed.append(case_id)

    def show_diff(title: str, ids: list[str]) -> None:
        print(f"\n{title} ({len(ids)}):")
        for case_id in ids:
            old = " ".join(x for x in expected.get(case_id, ("-", "")) if x)
            cur = " ".join(x for x in results.get(case_id, ("MISSING", "")) if x)
            print(f"  {case_id}: expected {old}  ->  got {cur}")

    if worse:
        problems.append(f"{len(worse)} case(s) got worse than {args.expected}")
        show_diff("Regressions vs baseline", worse)
    if missing:
        problems.append(f"{len(missing)} case(s) in {args.expected} did not run")
        show_diff("Missing vs baseline", sorted(missing, key=case_key))
    if better:
        warnings.append(f"{len(better)} case(s) got better than {args.expected}")
        show_diff("Improvements vs baseline", better)
    if changed:
        warnings.append(f"{len(changed)} case(s) changed (same rank) vs {args.expected}")
        show_diff("Changed vs baseline", changed)
    if new:
        warnings.append(f"{len(new)} case(s) not in {args.expected}")
        show_diff("New cases (not in baseline)", sorted(new, key=case_key))

    print()
    if args.update:
        if problems:
            for p in problems:
                print(f"conformance: FAIL: {p}", file=sys.stderr)
            print(f"conformance: not updating {args.expected} while the run has failures", file=sys.stderr)
            return 1
        write_results(args.expected, results, args.header + [
            "Baseline for scripts/conformance.sh: a case may not get worse than this.",
            "Regenerate with `scripts/conformance.sh --update`.",
            "<case-id> <BEHAVIOR> <BEHAVIOR_CLOSE> (spaces in kosoku's labels written as _)",
        ])
        print(f"conformance: wrote {args.expected} ({len(results)} cases)")
        return 0

    for w in warnings:
        print(f"conformance: WARNING: {w}" + (
            "; update the baseline with `scripts/conformance.sh --update`"
            if "better" in w or "changed" in w or "not in" in w else ""), file=sys.stderr)
    if problems:
        for p in problems:
            print(f"conformance: FAIL: {p}", file=sys.stderr)
        return 1
    print("conformance: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
