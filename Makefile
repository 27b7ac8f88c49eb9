# Two commands do all the set-up on a machine with Python 3.11 and pip:
#   make demo   install into .venv, build the demo data, run the demo notebooks, render HTML
#   make test   install into .venv and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install demo test lab clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bt demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf demo_output .pytest_cache
