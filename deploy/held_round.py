"""Read the aggregator's log on stdin; print the round a frozen hospital holds open, or nothing.

    docker compose logs --no-color aggregator | python3 deploy/held_round.py --frozen hospital-5

`make compose-test` freezes one hospital (`docker compose pause`) once round 1 has opened.
Every round that hospital has not uploaded to then stays open until the round deadline:
the round is "held" once every other participant's upload is folded and the round is
neither sealed nor failed. The chaos step kills the aggregator only then, so the kill
lands inside an open round whatever the machine's speed. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys

OPENED = re.compile(r"round (\d+) attempt (\d+) opened for \[([^\]]*)\] \(train\)")
FOLDED = re.compile(r"round (\d+): folded node (\S+) \((\d+)/(\d+)\)")
ENDED = re.compile(r"round (\d+) (?:sealed|failed)")


def held_round(log: str, frozen: str) -> int | None:
    """The latest training round, opened with `frozen` among its participants, in which every other participant
    is folded and that has not ended; None if there is none (yet)."""
    opened: dict[int, set[str]] = {}
    folded: dict[int, set[str]] = {}
    ended: set[int] = set()
    for line in log.splitlines():
        if match := OPENED.search(line):
            opened[int(match[1])] = {name.strip().strip("'\"") for name in match[3].split(",") if name.strip()}
            folded[int(match[1])] = set()
        elif match := FOLDED.search(line):
            folded.setdefault(int(match[1]), set()).add(match[2])
        elif match := ENDED.search(line):
            ended.add(int(match[1]))
    for round_id in sorted(opened, reverse=True):
        participants = opened[round_id]
        if round_id not in ended and frozen in participants and folded[round_id] == participants - {frozen}:
            return round_id
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frozen", required=True, help="the paused hospital's node id")
    held = held_round(sys.stdin.read(), parser.parse_args().frozen)
    if held is not None:
        print(held)
    return 0


if __name__ == "__main__":
    sys.exit(main())
