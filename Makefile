# The two commands of the README, and what they share.
.PHONY: demo test setup lint

demo: setup
	.venv/bin/python manage.py demo

test: setup
	bash scripts/ensure-chromium
	Q_CLUSTER_NAME=perfgate-tests .venv/bin/python -m pytest $(PYTEST_ARGS)

setup:
	bash scripts/bootstrap

lint: setup
	.venv/bin/ruff check .
