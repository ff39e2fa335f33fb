#!/usr/bin/env python3
"""Prints the test run's timing summary from nextest's JUnit file.

One line per group, slowest group first: each end-to-end module (`sync`,
`lifecycle::fleet`, ...) and each other test binary (a crate's unit tests, the plugin
host's integration tests). Then the slowest tests, the failed ones, and the pace the
deadlines were scaled by (tests/harness/pace.rs).

usage: timings.py JUNIT_XML [--pace FILE] [--wall SECONDS]
"""

import argparse
import collections
import sys
import xml.etree.ElementTree as ET

E2E_SUITE = "latchkey-e2e::e2e"
SLOWEST = 10


def group_of(suite, test):
    """An e2e test's module (at most two levels); any other test's binary."""
    if suite != E2E_SUITE:
        return suite
    modules = test.split("::")[:-1] or ["(top)"]
    return "e2e " + "::".join(modules[:2])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("junit")
    parser.add_argument("--pace")
    parser.add_argument("--wall", type=int)
    args = parser.parse_args()
    try:
        root = ET.parse(args.junit).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"no timing summary: cannot read {args.junit}: {e}")
        return 0

    groups = collections.defaultdict(lambda: {"tests": 0, "failed": 0, "time": 0.0, "slowest": (0.0, "")})
    tests = []
    failed = []
    for suite in root.iter("testsuite"):
        name = suite.get("name", "?")
        for case in suite.iter("testcase"):
            test = case.get("name", "?")
            took = float(case.get("time") or 0)
            broke = case.find("failure") is not None or case.find("error") is not None
            g = groups[group_of(name, test)]
            g["tests"] += 1
            g["time"] += took
            g["failed"] += broke
            if took > g["slowest"][0]:
                g["slowest"] = (took, test.split("::")[-1])
            tests.append((took, f"{name} {test}"))
            if broke:
                failed.append(f"{name} {test}")

    print()
    print("== timing summary (test time summed per group; tests run two at a time)")
    width = max((len(g) for g in groups), default=10)
    print(f"{'group':<{width}}  {'tests':>5}  {'failed':>6}  {'time':>8}  slowest test")
    for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["time"]):
        took, slowest = g["slowest"]
        print(
            f"{name:<{width}}  {g['tests']:>5}  {g['failed']:>6}  {g['time']:>7.1f}s  "
            f"{took:.1f}s {slowest}"
        )
    print()
    print(f"slowest {SLOWEST} tests:")
    for took, test in sorted(tests, reverse=True)[:SLOWEST]:
        print(f"  {took:7.1f}s  {test}")
    total = sum(g["tests"] for g in groups.values())
    line = f"{total} tests, {len(failed)} failed"
    if args.wall is not None:
        line += f", {args.wall // 60}m{args.wall % 60:02d}s of wall time"
    print()
    print(line)
    for test in failed:
        print(f"  FAILED {test}")
    if args.pace:
        try:
            with open(args.pace) as f:
                factor, _, source = f.read().strip().partition(" ")
            print(f"deadlines scaled x{float(factor):.1f} ({source})")
        except (OSError, ValueError):
            print("deadlines not scaled (no test measured the pace)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
