"""Writes the README's `make demo` table from a demo run's results.json.

Usage:
  python scripts/demo_table.py runs/demo [--readme README.md] [--load "$(uptime)"]
      [--keep docs/demo/results.json]

`make demo` writes only under runs/ (untracked). `--keep` copies the run's results.json to a
tracked file (`make demo-table` uses docs/demo/results.json) and the table cites that copy.

The table goes between the lines `<!-- demo-table:begin -->` and `<!-- demo-table:end -->`
of the README (everything else is left as it is); its caption names the results file,
when it was written, the machine, and the load average when given. Nothing in the table
is typed by hand.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import sys
from typing import Any, Dict, List, Optional

BEGIN = "<!-- demo-table:begin -->"
END = "<!-- demo-table:end -->"


def _pct(v: Optional[float]) -> str:
  return "-" if v is None else f"{100.0 * v:.1f}"


def _num(v: Optional[float], fmt: str) -> str:
  return "-" if v is None else fmt.format(v)


def demo_table(results: Dict[str, Any], *, source: str, machine: str,
               load: Optional[str] = None) -> str:
  """The markdown caption + table of a multi-run results dict ({"runs": [...]}).

  Columns: method, linear probe %, kNN %, the held-out MI bound when the run has one
  (`heldout_mi_bound`; the training-batch estimate is not a bound and is not shown),
  training seconds.

  Raises:
    ValueError: `results` has no runs.
  """
  runs: List[Dict[str, Any]] = results.get("runs") or []
  if not runs:
    raise ValueError(f"{source} has no 'runs': expected the results.json of `make demo`")
  first = runs[0]
  steps = first.get("steps")
  caption = (
      f"Written by `python scripts/demo_table.py` from `{source}` ({machine}"
      + (f"; load average during the run: {load}" if load else "") + "). "
      f"{steps} steps of batch {first.get('batch_size')} per method on "
      f"{results.get('dataset', first.get('dataset'))}, linear probe and kNN scored on "
      f"the {first.get('eval_split', 'test')} split.")
  has_mi = any(r.get("heldout_mi_bound") is not None for r in runs)
  head = ["method", "linear probe %", "kNN %"] + (["held-out MI bound (nats)"] if has_mi
                                                  else []) + ["train s"]
  lines = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in runs:
    row = [str(r.get("method", r.get("name"))), _pct(r.get("linear_probe_accuracy")),
           _pct(r.get("knn_accuracy"))]
    if has_mi:
      row.append(_num(r.get("heldout_mi_bound"), "{:.3f}"))
    row.append(_num(r.get("train_seconds"), "{:.0f}"))
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
  """`text` with the lines between the demo-table markers replaced by `block`.

  Raises:
    ValueError: the markers are missing, repeated or out of order.
  """
  if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
    raise ValueError(f"README must contain {BEGIN!r} then {END!r}, once each")
  pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
  return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text)


def machine_description() -> str:
  return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="the demo's work directory (holds results.json)")
  parser.add_argument("--readme", default="README.md")
  parser.add_argument("--load", default=None,
                      help="load average during the run, e.g. the output of `uptime`")
  parser.add_argument("--machine", default=None, help="default: this machine")
  parser.add_argument("--keep", default=None,
                      help="copy results.json here (a tracked file) and cite the copy")
  args = parser.parse_args(argv)
  path = os.path.join(args.workdir, "results.json")
  with open(path) as f:
    results = json.load(f)
  written = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc)
  if args.keep:
    os.makedirs(os.path.dirname(os.path.abspath(args.keep)), exist_ok=True)
    shutil.copyfile(path, args.keep)
    path = args.keep
  source = f"{path}, written {written:%Y-%m-%d %H:%M} UTC"
  block = demo_table(results, source=source, machine=args.machine or machine_description(),
                     load=args.load)
  with open(args.readme) as f:
    text = replace_block(f.read(), block)
  with open(args.readme, "w") as f:
    f.write(text)
  print(block)
  return 0


if __name__ == "__main__":
  sys.exit(main())
