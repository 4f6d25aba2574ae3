"""The whole promptsource collection through `t2t import promptsource`: how many templates compile, and how long.

    pip download --no-deps --no-binary=:all: --ignore-requires-python promptsource==0.2.3 -d /tmp/ps
    tar xzf /tmp/ps/promptsource-0.2.3.tar.gz -C /tmp/ps
    python bench/promptsource_import.py /tmp/ps/promptsource-0.2.3

Figures go to docs/ecosystem.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from t2t.promptsource import _Loader, import_promptsource, templates_dir


def main(path: Path) -> None:
    files = sorted(templates_dir(path).rglob("templates.yaml"))
    in_files = sum(len(yaml.load(f.read_text(), Loader=_Loader)["templates"]) for f in files)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        report = import_promptsource(path, Path(out))
        first = time.perf_counter() - started
        started = time.perf_counter()
        again = import_promptsource(path, Path(out))
        second = time.perf_counter() - started
    print(f"{len(files)} templates.yaml files, {in_files} templates")
    print(
        f"imported: {len(report.new)} task files, {report.templates} templates compile, {len(report.failed)} do not"
    )
    for line in report.failed:
        print(f"  {line}")
    print(f"first import {first:.1f} s; re-import {second:.1f} s ({len(again.unchanged)} files unchanged)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="an unpacked promptsource sdist (or its templates folder)")
    main(parser.parse_args().path)
