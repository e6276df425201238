# FedXray. `make demo` and `make test` work from a fresh clone: both create the
# virtual environment (.venv) and install the pinned requirements when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
# checkov, the Kubernetes manifests' policy scan, in a virtual environment of its own (its dependencies would pin
# the services' own): deploy/k8s/requirements-checkov.txt.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.requirements-installed
PROTO := protos/fedxray/v1/fedxray.proto

.PHONY: venv demo test test-fast protos attacks k8s-render k8s-scan pretrain privacy-table bench-he bench-round bench-decrypt bench-dp bench-help soak clean

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $(STAMP)

$(CHECKOV_STAMP): deploy/k8s/requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --disable-pip-version-check -q -r deploy/k8s/requirements-checkov.txt
	@touch $(CHECKOV_STAMP)

venv: $(STAMP) $(CHECKOV_STAMP)

## demo: five hospitals, SYNTHETIC radiographs, ResNet-50 from the public stand-in (built on first use), three secure rounds of per-patient DP-SGD on 127.0.0.1
demo: $(STAMP)
	$(PY) -m scripts.consortium

## attacks: gradient inversion, membership inference and adversarial examples against FedXray's protections (SYNTHETIC data); writes runs/attacks/ATTACKS.md
attacks: $(STAMP)
	$(PY) -m experiments.attacks --out runs/attacks

## pretrain: the public stand-in the demo starts from (SYNTHETIC, another seed and task), cached under runs/pretrain
pretrain: $(STAMP)
	$(PY) -m experiments.pretrain

## privacy-table: privacy against utility on this CPU, 3 seeds (docs/RESULTS.md, "Learning under DP"), about 30 minutes
privacy-table: $(STAMP)
	$(PY) -m experiments.privacy_table --out runs/privacy_table

## test: the whole suite (unit, property-based, multi-process end-to-end)
test: $(STAMP) $(CHECKOV_STAMP)
	$(PY) -m pytest -q tests

## test-fast: the unit tests only (no service processes, no Docker), under a minute on 2 cores
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "unit and not slow" tests

## protos: regenerate the checked-in stubs (a test fails when they are stale)
protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

## bench-he: packed CKKS codec versus one-float-per-slot TenSEAL on a ResNet-50-sized update
bench-he: $(STAMP)
	$(PY) -m benchmarks.bench_he

## bench-round: plaintext, secure and secure-with-precompute rounds and their critical paths, ResNet-50 at 64 px, 5 nodes x 200 images
bench-round: $(STAMP)
	$(PY) -m benchmarks.bench_round

## bench-decrypt: the key authority alone decrypting a ResNet-50-sized sum as it streams in, by decryption processes
bench-decrypt: $(STAMP)
	$(PY) -m benchmarks.bench_decrypt

## soak: 20 rounds through the real services (tiny model); memory, open files and staging per process and round
soak: $(STAMP)
	$(PY) -m benchmarks.soak

## bench-dp: one DP-SGD step (each Opacus mode, and last-block fine-tuning) against a non-private one, ResNet-50 at 64 px, batch 16
bench-dp: $(STAMP)
	$(PY) -m benchmarks.bench_dp

## bench-help: how fast each service's --help answers, beside a fresh import of torch and TenSEAL
bench-help: $(STAMP)
	$(PY) -m benchmarks.bench_help

clean:
	rm -rf runs .pytest_cache

# --- deployment (docs/DEPLOYMENT.md) ---------------------------------------------------
.PHONY: compose-config compose-test
COMPOSE_YML ?= deploy/docker-compose.yml

## compose-config: validate the compose files with the Compose v2 CLI (fails on an invalid file)
compose-config:
	deploy/compose.sh --project-directory deploy -f $(COMPOSE_YML) config --quiet
	deploy/compose.sh --project-directory deploy -f $(COMPOSE_YML) -f deploy/docker-compose.gpu.yml --profile grafana config --quiet
	@echo "compose-config: $(COMPOSE_YML) (+ GPU override, grafana profile) is valid"

## compose-test: real `docker compose up` (root): 5 hospitals, 2 rounds, asserts round latency in Prometheus
## k8s-render: render every Kubernetes overlay (deploy/k8s) to runs/k8s/<overlay>.yaml with kubectl kustomize
k8s-render:
	mkdir -p runs/k8s
	for overlay in consortium hospital hospital-gpu monitoring monitoring-operator; do \
		kubectl kustomize --load-restrictor=LoadRestrictionsNone deploy/k8s/overlays/$$overlay > runs/k8s/$$overlay.yaml || exit 1; \
	done
	@echo "rendered: runs/k8s/{consortium,hospital,hospital-gpu,monitoring,monitoring-operator}.yaml"

## k8s-scan: render every overlay, then checkov's policy scan of them (exceptions, with reasons: deploy/k8s/checkov.yaml)
k8s-scan: k8s-render $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov --config-file deploy/k8s/checkov.yaml -d runs/k8s

compose-test: $(STAMP)
	PY=$(PY) deploy/compose_test.sh
