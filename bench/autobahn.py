"""Sort an Autobahn|Testsuite fuzzing-client report of the chat page's WebSocket.

Autobahn's cases expect an echo server: one that sends nothing of its own and
sends each message back.  The room is not one: it speaks first (`hello`), a
first text is a name, later texts are chat lines it relays as JSON events, and
binary messages and messages over --max-line are refused on purpose (1003,
1009).  So this sorts each case by what is left once the room's own JSON
events are taken out of what came and the echoes out of what was expected:

  strict      the frames and the close are what the case wants (Autobahn's OK)
  non-strict  what the case allows (Autobahn's NON-STRICT)
  no echo     a case that wants its message echoed, and gets everything else
              it wants (or waited for the echo, gave up and closed with 1001
              itself, a close the room answered as it should): set aside
  limit       closed with 1003 (a binary message) or 1009 (over --max-line)
  differs     anything else: a real difference, to look at

Usage: python3 bench/autobahn.py REPORTS_DIR   (the spec's "outdir")
"""

import collections
import json
import os
import sys


def room_event(event: list) -> bool:
    """A text message holding one of the room's JSON events."""
    if event[0] != "message" or event[2]:
        return False
    text = event[1]
    if text.startswith("0x"):   # Autobahn writes non-ASCII text as hex, cut short
        text = bytes.fromhex(text[2:].split(" ")[0]).decode("utf-8", "replace")
    return text.startswith('{"type": ')


def sort_case(report: dict) -> str:
    got = [e for e in report["received"] if not room_event(e)]
    allowed = {verdict: [e for e in events if e[0] != "message"]
               for verdict, events in report["expected"].items()}
    wants_echo = allowed != report["expected"]
    matches = [verdict for verdict, events in allowed.items() if events == got]
    code, gave_up = report["remoteCloseCode"], report["closedByMe"] and report["localCloseCode"] == 1001
    if code in (1003, 1009) and code != report["localCloseCode"]:   # the room's, not an answer
        return "limit"
    if not matches or not (gave_up and wants_echo or code in report["expectedClose"]["closeCode"]):
        return "differs"
    if wants_echo:
        return "no echo"
    return "strict" if "OK" in matches else "non-strict"


def group(case: str) -> str:
    parts = case.split(".")
    return ".".join(parts[:2]) if parts[0] == "9" else parts[0]


def main(outdir: str) -> None:
    index = json.load(open(os.path.join(outdir, "index.json")))
    (agent, cases), = index.items()
    table = collections.defaultdict(collections.Counter)
    differs = []
    for case, summary in sorted(cases.items(), key=lambda c: [int(x) for x in c[0].split(".")]):
        with open(os.path.join(outdir, summary["reportfile"].replace(".html", ".json"))) as f:
            kind = sort_case(json.load(f))
        table[group(case)][kind] += 1
        table[group(case)]["autobahn: " + summary["behavior"]] += 1
        if kind == "differs":
            differs.append(case)
    kinds = ("strict", "non-strict", "no echo", "limit", "differs")
    print("| cases | " + " | ".join(kinds) + " | Autobahn's own verdicts |")
    print("|---" * (len(kinds) + 2) + "|")
    for name, counts in table.items():
        verdicts = ", ".join(f"{k[10:]} {n}" for k, n in sorted(counts.items()) if k.startswith("autobahn"))
        print(f"| {name} | " + " | ".join(str(counts[k]) for k in kinds) + f" | {verdicts} |")
    print(f"\n{agent}: differs in {', '.join(differs) or 'none'}")


if __name__ == "__main__":
    main(sys.argv[1])
