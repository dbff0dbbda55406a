# Two entry points (see README): `make demo` runs the whole pipeline on the built-in synthetic dataset,
# `make test` lints (ruff) and runs the test suite. Both create .venv and install what they need first.
PY := .venv/bin/python

.PHONY: venv venv-dev demo test bench clean

venv:
	@scripts/install.sh

venv-dev:
	@scripts/install.sh dev

demo: venv
	$(PY) cli.py demo --out demo_out

test: venv-dev
	$(PY) -m ruff check .
	@# yapf (imported by mmengine) writes its grammar cache on first import, not atomically: two test workers
	@# importing it at once on a fresh install can read a half-written file (EOFError). Import it once first.
	@$(PY) -c "import importlib.util as u; u.find_spec('yapf') and __import__('yapf')"
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: venv-dev
	$(PY) -m benchmarks --quick --out benchmarks/results

clean:
	rm -rf .venv demo_out .pytest_cache
