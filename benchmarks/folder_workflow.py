"""The class-folder workflow end to end on real photos, with the commands a user types.

    python benchmarks/folder_workflow.py            # ~8 minutes on 2 CPU cores

The 2,000-image mini-ImageNet sample (../shared/data/miniimagenet-sample, 100 classes x 20
photos; never copied into the repository) is laid out as one folder per class (symlinks in
$WORK, default /tmp/folder-workflow), then:

1. `l2l-app data check --dataset folder` (seeded 64/16/20 class split);
2. `l2l-app train --dataset folder` (ProtoNet, a few minutes);
3. `l2l-app eval` on the test classes (5-way 1-shot and 5-shot);
4. `l2l-app predict` on 5 of the test classes -- classes the model has never seen: 5 photos of
   each as the support set, the other 15 of each as queries -- and the accuracy of those
   predictions against the true folders;
5. `l2l-app export --format torchscript` (the sidecar JSON is kept, the model file is not).

Outputs land in benchmarks/results/folder-workflow/: the run record (config, preprocessing,
splits, metrics, evaluations; no checkpoints), data-check.json, predictions.csv, summary.json.
The sample is far too small to measure mini-ImageNet accuracy (20 photos per class instead of 600,
1,280 training photos): these numbers show the workflow works on real photos, not a benchmark.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results" / "folder-workflow"
SAMPLE = Path(os.environ.get("SAMPLE", REPO.parent / "shared" / "data" / "miniimagenet-sample"))
WORK = Path(os.environ.get("WORK", "/tmp/folder-workflow"))
MINUTES = os.environ.get("MINUTES", "5")


def l2l_app(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "l2l_app.cli", *map(str, args)]
    print("+ l2l-app", " ".join(map(str, args)), flush=True)
    done = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def lay_out_class_folders() -> Path:
    """WORK/photos/<wnid>/<file>.jpg symlinks to the sample's photos, from its three CSVs."""
    photos = WORK / "photos"
    if photos.exists():
        shutil.rmtree(photos)
    for split in ("train", "val", "test"):
        with open(SAMPLE / f"{split}.csv", newline="") as f:
            for row in csv.DictReader(f):
                target = photos / row["label"] / row["filename"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(SAMPLE / "images" / row["filename"])
    return photos


def main() -> None:
    if not (SAMPLE / "images").is_dir():
        raise SystemExit(f"the mini-ImageNet sample is not at {SAMPLE}; set SAMPLE=")
    photos = lay_out_class_folders()
    OUT.mkdir(parents=True, exist_ok=True)
    run = OUT / "run"
    data = ["--dataset", "folder", "--data-root", photos]
    report = l2l_app("data", "check", *data, "--ways", "5", "--shots", "5", "--queries", "15", "--json", "--quiet",
                     capture=True)
    (OUT / "data-check.json").write_text(report)

    start = time.time()
    # 42x42 photos and 32 filters: a CPU does ~10x more steps than at 84x84 with 64 filters
    l2l_app("train", *data, "--image-size", "42", "--algo", "protonet", "--hidden", "32", "--ways", "5",
            "--shots", "5", "--queries", "15", "--train-ways", "10", "--train-shots", "5", "--train-queries", "5",
            "--iterations", "100000", "--time-budget", MINUTES, "--val-every", "200", "--val-episodes", "100",
            "--seed", "0", "--out", run, "--overwrite")
    train_seconds = time.time() - start
    for shots in ("5", "1"):
        l2l_app("eval", run, "--episodes", "1000", "--shots", shots, "--queries", "15", "--quiet")

    # New classes: 5 test classes, 5 photos each as support, the other 15 as queries.
    splits = json.loads((run / "splits.json").read_text())
    new_classes = splits["test"][:5]
    support, queries = WORK / "support", WORK / "queries"
    for folder in (support, queries):
        if folder.exists():
            shutil.rmtree(folder)
    truth = {}
    for name in new_classes:
        files = sorted((photos / name).iterdir())
        (support / name).mkdir(parents=True)
        for f in files[:5]:
            (support / name / f.name).symlink_to(f.resolve())
        for f in files[5:]:
            (queries / f.name).parent.mkdir(parents=True, exist_ok=True)
            (queries / f.name).symlink_to(f.resolve())
            truth[f.name] = name
    table = l2l_app("predict", run, "--support", support, "--query", queries, "--out", OUT / "predictions.csv",
                    capture=True)
    print("\n".join(table.splitlines()[:8]) + "\n...")
    with open(OUT / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    correct = sum(truth[Path(r["image"]).name] == r["predicted_class"] for r in rows)

    export = WORK / "protonet-photos.pt"
    l2l_app("export", run, "--format", "torchscript", "--out", export, "--overwrite")
    shutil.copy(export.with_name(export.name + ".json"), OUT / "export-sidecar.json")

    evals = {}
    for path in sorted(run.glob("eval-*.json")):
        ev = json.loads(path.read_text())
        p = ev["protocol"]
        evals[f"{p['ways']}w{p['shots']}s"] = {"mean": ev["mean"], "ci95": ev["ci95"], "episodes": ev["episodes"]}
    steps = max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines())
    summary = {"train_seconds": round(train_seconds, 1), "steps": steps, "test_classes": len(splits["test"]),
               "eval": evals, "predict": {"classes": new_classes, "support_per_class": 5,
                                          "queries": len(rows), "correct": correct,
                                          "accuracy": round(100.0 * correct / len(rows), 2)}}
    from l2l_app.runtime import environment
    summary["environment"] = environment()
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("steps", "eval", "predict")}, indent=2))


if __name__ == "__main__":
    main()
