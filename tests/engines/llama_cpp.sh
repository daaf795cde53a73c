#!/usr/bin/env bash
# Set up llama.cpp for tests/test_serving.py: llama-cpp-python built from its source distribution (no wheel
# exists for this machine; it compiles for a few minutes), and that same source unpacked under .engines/ for
# the converter it carries (convert_hf_to_gguf.py and gguf-py). Needs only the package registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=0.3.36
SDIST=.engines/llama_cpp_python-$VERSION.tar.gz
mkdir -p .engines
[ -f "$SDIST" ] || python -m pip download -q --no-deps --no-binary :all: -d .engines "llama-cpp-python==$VERSION"
[ -d ".engines/llama_cpp_python-$VERSION" ] || tar -xzf "$SDIST" -C .engines
python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null \
  || CMAKE_ARGS="-DGGML_NATIVE=OFF" python -m pip install -q "$SDIST"
