"""Summarise py-spy ``--format raw`` (collapsed stacks) output: where the time goes.

    python -m bench.profile_summary var/bench/profile-1-orders.1.txt [--top 30]

Prints the functions with the most samples on the stack (inclusive) and at
the top of the stack (self), as a share of all samples.
"""
import argparse
import collections
import re


def load(path):
    stacks = []
    pending = ""
    with open(path) as stream:
        for line in stream:
            # a frame named after code compiled from a string (SQLAlchemy's
            # generated functions) can contain newlines: a record ends only
            # at a line ending in its sample count
            pending += line.rstrip("\n")
            stack, _, count = pending.rpartition(" ")
            if not count.isdigit():
                pending += " "
                continue
            pending = ""
            stacks.append((stack.split(";"), int(count)))
    return stacks


def frame_name(frame):
    # "function (path/to/file.py:123)" -> "function (file.py)"
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    function, path = match.groups()
    parts = path.split("/")
    return "{} ({})".format(function, "/".join(parts[-2:]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--match", default=None, help="only functions whose name contains this")
    args = parser.parse_args(argv)
    stacks = load(args.path)
    total = sum(count for _, count in stacks) or 1
    inclusive = collections.Counter()
    own = collections.Counter()
    for frames, count in stacks:
        names = [frame_name(f) for f in frames]
        for name in set(names):
            inclusive[name] += count
        own[names[-1]] += count
    print("{} samples".format(total))
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print("\n-- {} --".format(title))
        shown = 0
        for name, count in counter.most_common():
            if args.match and args.match not in name:
                continue
            print("{:6.1f}%  {}".format(100.0 * count / total, name))
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main()
