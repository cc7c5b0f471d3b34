# Two commands for a newcomer: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL := 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test bench clean browser

$(STAMP): pyproject.toml constraints-dev.txt tracediff/_moments.c tracediff/_compare.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints-dev.txt -e '.[all,test]'
	$(PY) -m pip install -q --no-deps -c constraints-dev.txt onnx2torch tf-keras onnx2keras
	@touch $(STAMP)

# The demo's ports have planted bugs, so tracediff exits 1 (divergence found): that is success here.
demo: $(STAMP)
	$(VENV)/bin/tracediff demo --out demo-out || [ $$? -eq 1 ]

# The HTML report test renders in headless Chromium; install Debian's when we can, else it skips.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	    echo "chromium not installed: the HTML rendering test will be skipped"; }

test: $(STAMP) browser
	$(PY) -m pytest -q

bench: $(STAMP)
	for script in bench/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) demo-out build *.egg-info tracediff/*.so
