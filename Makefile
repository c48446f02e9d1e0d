.PHONY: start test bench

start:  ## install everything and run a complete local deployment (SQLite, demo tenants)
	bash scripts/start.sh

test:   ## install everything and run the whole test suite (SQLite, PostgreSQL, Chromium)
	bash scripts/test.sh

bench:  ## run the benchmarks (prints figures; not part of the tests)
	bash scripts/bootstrap.sh && .venv/bin/python benchmarks/run.py
