"""The README's quick start on the real MiniLM (slow: about a minute or two on 2 cores; `pytest -m slow`)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_quick_start() -> list[list[str]]:
    """The python commands of the README's first command line, so this test follows the README as it changes."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")  # join the continued lines
    first = next(line for line in text.splitlines() if line.startswith("pip install"))
    commands = [part.strip() for part in first.split("&&") if part.strip().startswith("python ")]
    return [re.findall(r'"[^"]*"|\S+', command) for command in commands]


@pytest.mark.slow
def test_quick_start_trains_and_predicts(tmp_path):
    train, predict = readme_quick_start()
    assert train[1] == "finetune_absa.py" and predict[1] == "use_absa.py"

    def run(words):
        words = [w.strip('"').replace("runs/quickstart", str(tmp_path / "quickstart")) for w in words]
        return subprocess.run([sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True, check=True)

    run(train)
    results = json.loads((tmp_path / "quickstart/results.json").read_text())
    assert results["test_macro_f1"] > 0.6, results["test"]  # chance is ~0.33 on the bundled sample
    lines = run(predict).stdout.splitlines()
    verdicts = dict(line.split(":")[0:2] for line in lines if "|" in line)
    assert set(verdicts) == {"battery", "screen", "keyboard", "trackpad"}
    assert verdicts["screen"].split()[0] == "negative" and verdicts["keyboard"].split()[0] == "positive"
