#!/usr/bin/env python3
"""Validates what a platform received against the contract in schema/.

Usage: wire_check.py SCHEMA_DIR FILE...
Each FILE holds `mosquitto_sub -v` lines: "TOPIC PAYLOAD". The topic's end
says the payload kind (any prefix). Commands (P/cmd, P/cmd/{id}) are what the
tests sent and are not checked. A line on a topic that is not in the
contract, a payload that is not JSON, or one that does not validate fails.
Prints one line per failure (at most 20) and a summary; exit 0 when all
validate, 1 otherwise.
"""
import json
import os
import re
import sys

import jsonschema

KINDS = [
    (re.compile(r"/status$"), "status.json"),
    (re.compile(r"/status/event$"), "notice.json"),
    (re.compile(r"/device/[^/]+/state$"), "device-state.json"),
    (re.compile(r"/device/[^/]+/telemetry$"), "telemetry.json"),
    (re.compile(r"/device/[^/]+/event$"), "event.json"),
    (re.compile(r"/device/[^/]+/alarm$"), "alarm.json"),
    (re.compile(r"/cmd/[^/]+/result$"), "command-result.json"),
    (re.compile(r"/result$"), "command-result.json"),
    (re.compile(r"/cmd(/[^/]+)?$"), None),  # sent by the test, not by cgwd
]


def load(schema_dir):
    schemas = {}
    for name in os.listdir(schema_dir):
        if name.endswith(".json"):
            with open(os.path.join(schema_dir, name), encoding="utf-8") as f:
                schemas[name] = json.load(f)
    cls = jsonschema.Draft202012Validator
    try:  # jsonschema >= 4.18
        from referencing import Registry, Resource

        reg = Registry().with_resources(
            (s["$id"], Resource.from_contents(s)) for s in schemas.values())
        make = lambda s: cls(s, registry=reg)  # noqa: E731
    except ImportError:  # Debian 12: 4.10
        store = {s["$id"]: s for s in schemas.values()}
        make = lambda s: cls(s, resolver=jsonschema.RefResolver.from_schema(s, store=store))  # noqa: E731
    for s in schemas.values():
        cls.check_schema(s)
    return {n: make(s) for n, s in schemas.items()}


def main():
    validators = load(sys.argv[1])
    n = bad = 0
    for path in sys.argv[2:]:
        try:
            f = open(path, encoding="utf-8", errors="replace")
        except OSError:
            continue
        with f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                topic, _, payload = line.partition(" ")
                if payload in ("", "(null)"):
                    continue  # a retained message cleared by a test
                kind = next((k for rx, k in KINDS if rx.search(topic)), "?")
                if kind is None:
                    continue
                n += 1
                why = None
                if kind == "?":
                    why = "topic not in the contract"
                else:
                    try:
                        obj = json.loads(payload)
                    except ValueError as e:
                        why = "not JSON: %s" % e
                    else:
                        err = next(iter(sorted(validators[kind].iter_errors(obj),
                                               key=lambda e: list(e.path))), None)
                        if err is not None:
                            where = "/".join(str(p) for p in err.absolute_path)
                            why = "%s: %s%s" % (kind, err.message,
                                                " at " + where if where else "")
                if why:
                    bad += 1
                    if bad <= 20:
                        print("%s:%d: %s: %s | %s" % (os.path.basename(path), lineno, topic,
                                                      why, payload[:200]))
    print("%d messages checked, %d not valid" % (n, bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
