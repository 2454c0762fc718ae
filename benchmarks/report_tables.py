"""The README's tables of a committed benchmark report, printed from its report.json, so that the numbers quoted in
README.md and benchmarks/README.md are the report's own (the rows are the report's, by the same functions).

    python benchmarks/report_tables.py benchmarks/results/digits_benchmark/report.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from synthaug.report import (ARM_HEADER, QUALITY_HEADER, arm_rows, gain_text, markdown_table, per_class_text,
                             quality_rows)


def tables(report: dict) -> str:
    p = report.get("provenance") or {}
    lines = [f"Command: `{report['command']}`; synthaug {report['synthaug']}, commit {(p.get('commit') or 'unknown')[:12]}"
             f"{' (with uncommitted changes)' if p.get('dirty') else ''}, {p.get('date')}; {report['machine']}; "
             f"{report['total_s']:.0f} s in the benchmark; reused stages: {len(p.get('reused_stages', []))}, reused "
             f"generators: {len(p.get('reused_generators', []))}.", ""]
    for s in report["settings"]:
        summary, c = s["summary"], s["choices"]
        lines += [f"**{per_class_text(s)}.** {summary['verdict']}", "",
                  f"- {'Chosen' if c.get('chosen', True) else 'Best candidate, not chosen'}: {c['label']}; on test "
                  f"{gain_text(summary['gain'])} against {summary['baseline_arm']}.",
                  f"- Validation gain over real + classic aug: {gain_text(c['validation_gain_over_classic_aug'])}.", ""]
    lines += [markdown_table([h for i, h in enumerate(ARM_HEADER) if i != 2],
                             [[x for i, x in enumerate(r) if i != 2] for s in report["settings"] for r in arm_rows(s)]), "",
              markdown_table(QUALITY_HEADER, [r[:len(QUALITY_HEADER)] for r in quality_rows(report)]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="a benchmark's report.json")
    text = tables(json.loads(ap.parse_args(argv).report.read_text()))
    print(text)
    return text


if __name__ == "__main__":
    main()
