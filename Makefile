# Targets mirror CI (.ci/run). Go 1.27 is required; the machines start with an older Go.
export GOTOOLCHAIN := go1.27.3
STATICCHECK_VERSION := v0.8.2
GOBIN := $(shell go env GOPATH)/bin

.PHONY: help run test lint vuln ci package bench bench-long cost

## help: list the targets
help:
	@awk '/^## / { line = substr($$0, 4); \
		if (match(line, /^[a-z-]+: /)) { printf "  %-11s %s\n", substr(line, 1, RLENGTH - 2), substr(line, RLENGTH + 1) } \
		else { printf "  %-11s %s\n", "", line } }' $(MAKEFILE_LIST)

## run: start the local runtime (embedded store in ./wspresence-data)
run:
	go run ./cmd/wspresence serve

## test: every test, with the race detector
test:
	go test -race -count=1 ./...

## lint: gofmt, go vet, staticcheck, go mod tidy check (the service's module and the bench's)
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	go vet ./...
	@test -x $(GOBIN)/staticcheck || go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(GOBIN)/staticcheck ./...
	go mod tidy -diff
	cd bench && go vet ./... && $(GOBIN)/staticcheck ./... && go mod tidy -diff

## bench: the short benchmark profile, about 20 minutes on 2 cores (15 of them the users
## scenario's million visits): bench/results/<date>.json, docs/benchmarks.md and
## docs/benchmarks.png; bench-long is the long profile. The load generator is its own
## module (bench/go.mod), so its libraries stay out of the service's.
## BENCH_REFERENCE=<git revision> also measures that build on the publishers scenario,
## in the same run (the before of a change).
BENCH_PROFILE ?= short
BENCH_REFERENCE ?=
bench:
	@mkdir -p bench/results
	go build -o bench/wspresence ./cmd/wspresence
	cd bench && go build -o wspresence-bench ./cmd/wspresence-bench
ifneq ($(BENCH_REFERENCE),)
	rm -rf bench/.reference && mkdir -p bench/.reference
	git archive $(BENCH_REFERENCE) | tar -x -C bench/.reference
	cd bench/.reference && go build -o ../wspresence-reference ./cmd/wspresence
	rm -rf bench/.reference
	./bench/wspresence-bench --profile $(BENCH_PROFILE) --server ./bench/wspresence \
		--reference ./bench/wspresence-reference --reference-name "$$(git rev-parse --short $(BENCH_REFERENCE))"
else
	./bench/wspresence-bench --profile $(BENCH_PROFILE) --server ./bench/wspresence
endif

bench-long:
	$(MAKE) bench BENCH_PROFILE=long

## cost: the AWS bill per million connections and messages, counted by the meter against
## dynalite (needs `npm ci`), beside the API Gateway floor; thresholds in
## internal/costmeter/thresholds.json
cost:
	bash .ci/cost

## vuln: vulnerability scan (online database, or one built offline from golang.org/x/vulndb)
vuln:
	bash .ci/govulncheck ./...

## ci: what CI runs
ci:
	bash .ci/run

# ---------------------------------------------------------------- Lambda packaging
# Each function is services/<name>, built for arm64 (provided.al2023) as a static
# "bootstrap". `make package` zips them into dist/<name>.zip; `sam build` (BuildMethod:
# makefile) calls the build-<LogicalId> targets below with ARTIFACTS_DIR set.
LAMBDA_ARCH ?= arm64
LAMBDA_FLAGS := -tags lambda.norpc -trimpath -ldflags="-s -w"
FUNCTIONS := authorizer restauthorizer connect disconnect projector publisher grace sender online sweeper
lambda = CGO_ENABLED=0 GOOS=linux GOARCH=$(LAMBDA_ARCH) go build $(LAMBDA_FLAGS) -o $(ARTIFACTS_DIR)/bootstrap ./services/$(1)

## package: dist/<function>.zip for every function (arm64 bootstrap)
package:
	@rm -rf dist && mkdir -p dist
	@for fn in $(FUNCTIONS); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$(LAMBDA_ARCH) go build $(LAMBDA_FLAGS) -o dist/$$fn/bootstrap ./services/$$fn || exit 1; \
		(cd dist/$$fn && zip -q -X ../$$fn.zip bootstrap) || exit 1; \
		echo "dist/$$fn.zip $$(du -k dist/$$fn.zip | cut -f1) KB"; \
	done

build-WebSocketAdaptorAuthorizerFunction: ; $(call lambda,authorizer)
build-WebSocketAdaptorRestAuthorizerFunction: ; $(call lambda,restauthorizer)
build-WebSocketAdaptorOnConnectFunction: ; $(call lambda,connect)
build-WebSocketAdaptorOnDisconnectFunction: ; $(call lambda,disconnect)
build-WebSocketAdaptorProjectorFunction: ; $(call lambda,projector)
build-WebSocketAdaptorPublisherFunction: ; $(call lambda,publisher)
build-WebSocketAdaptorGraceFunction: ; $(call lambda,grace)
build-WebSocketAdaptorSendMessageFunction: ; $(call lambda,sender)
build-WebSocketAdaptorRestOnlineListFunction: ; $(call lambda,online)
build-WebSocketAdaptorSweeperFunction: ; $(call lambda,sweeper)
