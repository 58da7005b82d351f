# token-vendor — see README.md. `make run` and `make test` are the two commands.
SHELL := /bin/bash
GO ?= go
# sam build uses arm64 (template.yaml); tests build for the host with LAMBDA_ARCH.
LAMBDA_ARCH ?= arm64
GOFLAGS_LAMBDA := CGO_ENABLED=0 GOOS=linux GOARCH=$(LAMBDA_ARCH)
LAMBDA_BUILD := $(GO) build -trimpath -tags lambda.norpc -ldflags "-s -w"
ADDR ?= 127.0.0.1:8080
# Pinned: a new staticcheck release can add checks; upgrading is a deliberate change.
STATICCHECK_VERSION := v0.8.2
STATICCHECK := .cache/bin/staticcheck-$(STATICCHECK_VERSION)

.PHONY: run test unit vet lint lint-template build bench reliability smoke clean agent agent-binary agent-image build-ApiFunction build-VendFunction build-RefresherFunction build-TokenExtensionArm64 build-TokenExtensionX86

run: ## local vendor on embedded defaults (sandbox providers, in-memory cache)
	$(GO) run ./cmd/tokenvendor serve --addr $(ADDR)

test: vet lint ## everything, against DynamoDB Local and moto (installed/started by the project)
	bash scripts/ensure-tools.sh
	cfn-lint template.yaml
	$(GO) run ./tests/emulators -- $(GO) test -race -count=1 -timeout 20m ./...

unit: ## fast tests only; integration tests skip without emulators
	$(GO) test -race ./...

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

lint: $(STATICCHECK) ## tidy modules and a clean staticcheck
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	$(STATICCHECK) ./...

$(STATICCHECK):
	mkdir -p .cache/bin
	GOBIN=$(CURDIR)/.cache/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv .cache/bin/staticcheck $@

# sam build calls build-<LogicalId> with ARTIFACTS_DIR set (BuildMethod: makefile).
build-ApiFunction:
	$(GOFLAGS_LAMBDA) $(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/api
build-VendFunction:
	$(GOFLAGS_LAMBDA) $(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/vend
build-RefresherFunction:
	$(GOFLAGS_LAMBDA) $(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/refresher
# The extension layers: /opt/extensions/token-vendor, one layer per architecture
# (LAYER_ARCH overrides it for tests on the host).
build-TokenExtensionArm64:
	CGO_ENABLED=0 GOOS=linux GOARCH=$(or $(LAYER_ARCH),arm64) $(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/extensions/token-vendor ./functions/extension
build-TokenExtensionX86:
	CGO_ENABLED=0 GOOS=linux GOARCH=$(or $(LAYER_ARCH),amd64) $(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/extensions/token-vendor ./functions/extension

build: ## the three bootstraps under bin/<function>/
	$(MAKE) build-ApiFunction ARTIFACTS_DIR=bin/api
	$(MAKE) build-VendFunction ARTIFACTS_DIR=bin/vend
	$(MAKE) build-RefresherFunction ARTIFACTS_DIR=bin/refresher

# The agent for containers and instances (docs/agent.md): static binaries
# bin/agent/linux-{amd64,arm64}/tokenvendor-agent, and an OCI image layout
# (multi-arch, FROM scratch) built without a Docker daemon.
AGENT_OUT ?= bin/agent
AGENT_IMAGE ?= bin/agent-image
agent: ## the agent's static binaries for amd64 and arm64
	$(MAKE) agent-binary AGENT_ARCH=amd64
	$(MAKE) agent-binary AGENT_ARCH=arm64
agent-binary:
	@test -n "$(AGENT_ARCH)" || { echo "usage: make agent-binary AGENT_ARCH=amd64|arm64 [AGENT_OUT=dir]"; exit 2; }
	CGO_ENABLED=0 GOOS=linux GOARCH=$(AGENT_ARCH) $(GO) build -trimpath -ldflags "-s -w" -o $(AGENT_OUT)/linux-$(AGENT_ARCH)/tokenvendor-agent ./cmd/tokenvendor-agent
agent-image: agent ## the agent's OCI image layout (linux/amd64 + linux/arm64) -> bin/agent-image
	$(GO) run ./cmd/agent-image -bin $(AGENT_OUT) -out $(AGENT_IMAGE)

lint-template:
	cfn-lint template.yaml

bench: ## token-vendor vs x/oauth2 per process vs naive fetching -> BENCHMARKS.md + docs/fleet-upstream.png; plus the Go benchmarks
	bash scripts/ensure-tools.sh
	$(GO) run ./tests/emulators -- $(GO) test -run '^$$' -bench . -benchmem -benchtime 20000x ./tests/integration/
	$(GO) run ./tests/emulators -- $(GO) run ./bench -out BENCHMARKS.md -plot docs/fleet-upstream.png

reliability: ## fault suite at full sizes + bounded fuzzing -> RELIABILITY.md (a quick run is part of make test)
	bash scripts/ensure-tools.sh
	$(GO) run ./tests/emulators -- $(GO) run ./reliability -out RELIABILITY.md -fuzztime 15s

smoke: ## after a deploy: check the stack in AWS (make smoke STACK=name [PROVIDER=name] [REGION=r])
	@test -n "$(STACK)" || { echo "usage: make smoke STACK=<stack name> [PROVIDER=<provider>] [REGION=<region>]"; exit 2; }
	$(GO) run ./tests/smoke -stack "$(STACK)" $(if $(PROVIDER),-provider "$(PROVIDER)") $(if $(REGION),-region "$(REGION)")

clean:
	rm -rf .aws-sam bin .cache
