#!/usr/bin/env bash
# Regenerate benchmarks/results/report/ from the committed run records in benchmarks/results/runs/
# (config.json, run.json, metrics.jsonl, eval-*.json).  Checkpoints are not committed, so the report
# marks their evaluations "unverified" (nothing to hash) rather than current or stale.
# With chromium installed, also renders report-screenshot.png of the HTML page.
set -euo pipefail
cd "$(dirname "$0")/.."
L2L_APP="${L2L_APP:-.venv/bin/l2l-app}"
out=benchmarks/results/report
"$L2L_APP" report benchmarks/results/runs/*/ --out "$out" --overwrite
if command -v chromium >/dev/null 2>&1; then
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,4000 \
    --screenshot="$out/report-screenshot.png" "file://$PWD/$out/report.html" 2>/dev/null
  echo "screenshot: $out/report-screenshot.png"
fi
