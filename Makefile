# What the README tells people to type. Every target that needs the environment runs `setup` first.
VENV    := .venv
PY      := $(VENV)/bin/python
BRANET  := $(VENV)/bin/branet
PYTEST_ARGS ?=

.PHONY: setup test demo run bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf demo-out results var .pytest_cache
