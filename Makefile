.PHONY: start test test-deep test-fast lint bench

start:  ## install everything and run a complete local deployment (SQLite, demo tenants)
	bash scripts/start.sh

test:   ## install everything and run the whole test suite (SQLite, PostgreSQL, Chromium); what CI runs
	bash scripts/test.sh

test-deep:  ## `make test` with the fuzz tests' full example counts (slower; before a release)
	ENGINEX_TEST_DEEP=1 bash scripts/test.sh

test-fast:  ## quick local loop: SQLite only, no browser, no fuzz tests (no ruff; see lint)
	bash scripts/bootstrap.sh && ENGINEX_TEST_BACKENDS=sqlite .venv/bin/pytest -q -m "not browser and not fuzz"

lint:   ## ruff, as `make test` runs it
	bash scripts/bootstrap.sh && .venv/bin/ruff check enginex tests benchmarks

bench:  ## run the benchmarks (prints figures; not part of the tests)
	bash scripts/bootstrap.sh && .venv/bin/python benchmarks/run.py
