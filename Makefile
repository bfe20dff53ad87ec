# Everyday commands. `make run` brings up the whole platform with a demo tenant; `make test` runs
# the test suite. Both create the virtualenv in .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run web worker beat emulator test smoke lint format typecheck migrations-check messages ci clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) scripts/run_platform.py

web: $(STAMP)
	$(PY) manage.py runserver

worker: $(STAMP)
	$(VENV)/bin/celery -A addon_project worker --loglevel=INFO

beat: $(STAMP)
	$(VENV)/bin/celery -A addon_project beat --loglevel=INFO

emulator: $(STAMP)
	# The emulator app is installed only where http:// Shoptet URLs are allowed.
	SHOPTET_ALLOW_HTTP=true DEBUG=true $(PY) manage.py shoptet_emulator

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Production smoke run: a fresh virtualenv from requirements.txt alone, DEBUG unset, gunicorn + worker +
# beat + emulator; an install, a processed webhook, admin CSS, /readyz, /metrics (scripts/smoke.py).
smoke:
	$(PYTHON) scripts/smoke.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: $(STAMP)
	# Settings need DEBUG (or real secrets) to import; the django-stubs plugin imports them.
	DEBUG=true $(VENV)/bin/mypy .

migrations-check: $(STAMP)
	DEBUG=true $(PY) manage.py makemigrations --check --dry-run

# Refresh the translation catalogs from the code, then compile them (the .mo files are committed,
# so a fresh machine needs no gettext). Fill new msgstr lines in locale/*/LC_MESSAGES/django.po.
messages: $(STAMP)
	DEBUG=true $(PY) manage.py makemessages -l cs -l sk -l hu --no-location \
		--ignore=.venv --ignore='bench/*' --ignore='tests/*' --ignore='scripts/*'
	DEBUG=true $(PY) manage.py compilemessages --ignore=.venv

ci: lint typecheck migrations-check test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache test_db.sqlite3

# `bench/` is also a directory: without .PHONY make would call the target up to date and skip it.
.PHONY: bench
bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)
