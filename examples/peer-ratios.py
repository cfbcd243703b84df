#!/usr/bin/env python3
"""fleet's TFTP throughput against the best peer, row by row, from one or more runs of
../shared/bench/peer-baselines.sh (their results.jsonl files).

    peer-ratios.py [--ours fleet[,fleet-old]] RESULTS.jsonl...

The peer script runs one server after another; examples/bench-suite.sh runs it several times
with one repetition each, so that the repetitions of every server are interleaved in time and a
slow minute of the machine does not land on one server only. This takes the median of each
server's repetitions per row (path and client), the best peer's median, and prints
ours / best peer. Only rows every copy of which was verified (ok=1) count.
"""
import argparse
import json
import os
import statistics
import sys
from collections import defaultdict


def read_rows(paths):
    rows = []
    # The peer script's results/latest is a link to the newest run: counted once.
    for path in dict.fromkeys(os.path.realpath(path) for path in paths):
        with open(path) as lines:
            rows.extend(json.loads(line) for line in lines if line.strip())
    return [row for row in rows if row.get("kind") == "tftp" and row.get("ok") == 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", default="fleet", help="our servers' names, comma-separated")
    parser.add_argument("results", nargs="+")
    arguments = parser.parse_args()
    ours = arguments.ours.split(",")
    speeds = defaultdict(list)  # (path, client, server) -> MB/s of each repetition
    order = []
    for row in read_rows(arguments.results):
        key = (row["path"], row["client"])
        if key not in order:
            order.append(key)
        speeds[key + (row["server"],)].append(row["mbps"])
    servers = sorted({server for (_, _, server) in speeds})
    peers = [server for server in servers if server not in ours]
    if not peers or not any(server in servers for server in ours):
        sys.exit("peer-ratios: need rows of at least one peer and one of --ours %s" % ours)
    header = "%-5s %-28s %5s  %-22s" % ("path", "client / options", "reps", "best peer (MB/s)")
    header += "".join("  %-18s" % ("%s (ratio)" % name) for name in ours)
    print(header)
    print("-" * len(header))
    below = 0
    for path, client in order:
        medians = {
            server: statistics.median(speeds[(path, client, server)])
            for server in servers
            if (path, client, server) in speeds
        }
        peer_medians = {server: medians[server] for server in peers if server in medians}
        if not peer_medians:
            continue
        best = max(peer_medians, key=peer_medians.get)
        reps = min(len(speeds[(path, client, server)]) for server in medians)
        line = "%-5s %-28s %5d  %-22s" % (
            path, client, reps, "%s %.1f" % (best, peer_medians[best]))
        for name in ours:
            if name not in medians:
                line += "  %-18s" % "-"
                continue
            ratio = medians[name] / peer_medians[best]
            below += name == ours[0] and ratio < 1.0
            line += "  %-18s" % ("%.1f (%.2fx)" % (medians[name], ratio))
        print(line)
    print("%s is below the best peer on %d row(s)" % (ours[0], below))


if __name__ == "__main__":
    main()
