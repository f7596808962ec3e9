# Two commands for a fresh machine (each creates .venv first):
#   make demo   train on the embedded MNIST subset, then sample sixes
#   make test   lint (ruff check, ruff format --check), then run the test suite
# and the documentation site:
#   make docs   mkdocs build --strict into site/ (installs the docs extra into .venv the first time)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0: on this project's CPU machines pip takes a small CPU build from local disk.
# On a GPU machine, install the CUDA build you want first (pip install torch), then make setup.
TORCH  ?= torch==2.13.0
# The inception extra's package, as pinned in pyproject.toml. Installed without its dependencies:
# its torchvision would bring another torch build, and fm imports only its torch-only Inception module.
FIDELITY ?= torch-fidelity>=0.3,<0.5

.PHONY: setup demo lint test docs bench-cpu clean

$(BIN)/fm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps "$(FIDELITY)"
	$(BIN)/pip install -q --no-deps --no-build-isolation -e plugins/fm-adams-bashforth
	touch $(BIN)/fm

setup: $(BIN)/fm

demo: setup
	$(BIN)/fm train mnist-mini --out runs/demo
	$(BIN)/fm sample runs/demo/last.safetensors --class 6 --solver heun --steps 20 --num 64 --out runs/demo/six.png

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The site: docs/ and mkdocs.yml. --strict fails on a broken link, a missing page or a command without its page;
# docs/hooks.py generates the command reference from the Typer app, mkdocstrings the API from the docstrings.
docs: setup
	$(BIN)/python -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null || $(BIN)/pip install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs tests/.cache site
