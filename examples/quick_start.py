"""The Python API's Quick Start (the spec's python-api.md), with railguard's import.

    .venv/bin/python examples/quick_start.py [BASE_URL] [CONFIG]

BASE_URL is the OpenAI-compatible server to guard (default: $RAILGUARD_UPSTREAM_URL; try
the demo upstream, which only echoes: `.venv/bin/python -m proxy.cli demo-upstream` and
http://127.0.0.1:11435/v1). CONFIG is a config folder (default: examples/configs/demo).
The three Quick Start lines are NeMo's own: only the import changed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rails import LLMRails, RailsConfig

DEMO = Path(__file__).resolve().parent / "configs" / "demo"


def main(argv: list[str]) -> None:
    if len(argv) > 1:  # the demo config names no URL: the default upstream serves it
        os.environ["RAILGUARD_UPSTREAM_URL"] = argv[1]
    path = argv[2] if len(argv) > 2 else DEMO

    # Load configuration from the config directory
    config = RailsConfig.from_path(path)

    # Create the LLMRails instance
    rails = LLMRails(config)

    # Generate a response
    response = rails.generate(messages=[{"role": "user", "content": "Hello! How are you?"}])
    print(response["content"])


if __name__ == "__main__":
    main(sys.argv)
