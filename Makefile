# comem: `make demo` sets everything up and fixes a bundled example; `make test` runs the tests.
.PHONY: setup setup-demo lock docker images demo test test-fast test-stress clean-containers

setup:  ## everything the tests need: Docker, .venv (all extras, torch CPU), Chromium, .venv-vllm, images (idempotent)
	bash scripts/setup.sh test

setup-demo:  ## only what the demo needs: Docker, .venv (comem's own dependencies), images (idempotent)
	bash scripts/setup.sh demo

lock:  ## regenerate the hashed lock files in requirements/ (needs uv)
	bash scripts/lock.sh

docker:  ## only make sure a Docker daemon answers
	bash scripts/docker.sh

images: docker  ## (re)build the sandbox images
	bash sandbox/build.sh

demo: setup-demo  ## fix examples/calc with a recorded replay of the main model (no API key)
	.venv/bin/comem demo

test: setup  ## the whole test suite, Docker included
	.venv/bin/python -m pytest -q

test-stress: setup  ## the signal, interrupt and resume tests, three times in a row while busy loops take every core
	bash scripts/stress.sh

test-fast:  ## tests that need neither Docker nor models
	.venv/bin/python -m pytest -q -m "not docker and not vllm and not slow"

clean-containers:
	.venv/bin/comem sandbox prune
