# What the README tells people to type. Every target that needs the environment runs `setup` first.
VENV    := .venv
PY      := $(VENV)/bin/python
BRANET  := $(VENV)/bin/branet
PYTEST_ARGS ?=
KEEP    ?=
ALLOW_SENDER ?= STORESCU@127.0.0.1
RUN_ARGS ?=

.PHONY: setup test demo demo-files run bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The PACS round trip: Orthanc + plugin in the background, storescu the sample studies, print the results.
demo: setup
	$(PY) scripts/demo_orthanc.py $(if $(filter 1,$(KEEP)),--keep)

# The same analysis without Orthanc: `branet analyze samples/ --out demo-out/`.
demo-files: setup
	$(PY) scripts/demo.py

run: setup
	$(BRANET) orthanc run --allow-sender $(ALLOW_SENDER) $(RUN_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf demo-out results var .pytest_cache
