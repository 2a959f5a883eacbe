# Targets mirror CI (.ci/run). Go 1.27 is required; the machines start with an older Go.
export GOTOOLCHAIN := go1.27.3
STATICCHECK_VERSION := v0.8.2
GOBIN := $(shell go env GOPATH)/bin

.PHONY: run test lint vuln ci

## run: start the local runtime (embedded store in ./wspresence-data)
run:
	go run ./cmd/wspresence serve

## test: every test, with the race detector
test:
	go test -race -count=1 ./...

## lint: gofmt, go vet, staticcheck, go mod tidy check
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	go vet ./...
	@test -x $(GOBIN)/staticcheck || go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(GOBIN)/staticcheck ./...
	go mod tidy -diff

## vuln: offline vulnerability scan
vuln:
	bash ../shared/tools/govulncheck.sh ./...

## ci: what CI runs
ci:
	bash .ci/run
