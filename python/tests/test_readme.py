"""The README's Python example runs as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_section_examples() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "the Python section has two examples: frames, asyncio"
    return blocks


def python_section_example() -> str:
    return python_section_examples()[0]


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "frames.py"
    script.write_text(python_section_example())
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "consumer: 100 frames, sum of first pixels 4950", (out, err)
    # The example's namespace is gone with its creator.
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"frames-{proc.pid}_")]


def test_the_readme_asyncio_example_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "aio.py"
    script.write_text(python_section_examples()[1])
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "['job 0', 'job 1', 'job 2'] ['news 0', 'news 1', 'news 2']", (out, err)
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"aio-{proc.pid}_")]
