"""A current ClickHouse engine (chDB, in-process) behind a line protocol.

Reads one JSON object per line from stdin, {"sql": "..."}, runs it in one
chDB session whose data lives in the directory given as the first argument,
and writes one JSON line per statement to stdout: {"meta": [...], "data":
[...]} (ClickHouse's JSONCompact) or {"error": "...", "code": N}.
"""
import json
import re
import sys

try:
    from chdb import session
except ImportError as e:  # pragma: no cover - the Go side reports it
    sys.stdout.write(json.dumps({"error": "chdb is not installed (make deps installs it): %s" % e, "code": -1}) + "\n")
    sys.stdout.flush()
    sys.exit(3)

SETTINGS = [
    "SET output_format_json_quote_64bit_integers = 0",
    "SET output_format_json_quote_denormals = 1",
    "SET session_timezone = 'UTC'",
]


def main():
    s = session.Session(sys.argv[1])
    for q in SETTINGS:
        s.query(q)
    for line in sys.stdin:
        if not line.strip():
            continue
        sql = json.loads(line)["sql"]
        try:
            out = s.query(sql, "JSONCompact").bytes()
            if out.strip():
                doc = json.loads(out)
                reply = {"meta": doc["meta"], "data": doc["data"]}
            else:
                reply = {"meta": [], "data": []}
        except Exception as e:  # chDB raises ChdbError with "Code: N. DB::Exception: ..."
            msg = str(e)
            m = re.search(r"Code: (\d+)\.", msg)
            reply = {"error": msg, "code": int(m.group(1)) if m else 0}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
