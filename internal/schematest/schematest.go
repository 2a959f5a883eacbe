// Package schematest validates JSON payloads against the schemas in package schemas, for
// tests: every payload the service produces in a test can be checked against its contract.
package schematest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/wspresence/wspresence/schemas"
)

const base = "https://wspresence.dev/schemas/"

var (
	once     sync.Once
	compiled map[string]*jsonschema.Schema
	loadErr  error
)

func load() {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	names, err := fs.Glob(schemas.FS, "*.json")
	if err != nil {
		loadErr = err
		return
	}
	for _, n := range names {
		data, err := schemas.FS.ReadFile(n)
		if err != nil {
			loadErr = err
			return
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
		if err != nil {
			loadErr = fmt.Errorf("%s: %w", n, err)
			return
		}
		if err := c.AddResource(base+n, doc); err != nil {
			loadErr = fmt.Errorf("%s: %w", n, err)
			return
		}
	}
	compiled = map[string]*jsonschema.Schema{}
	for _, n := range names {
		s, err := c.Compile(base + n)
		if err != nil {
			loadErr = fmt.Errorf("compile %s: %w", n, err)
			return
		}
		compiled[n] = s
	}
}

// Validate checks data against the schema file name (see the schemas constants).
func Validate(name string, data []byte) error {
	once.Do(load)
	if loadErr != nil {
		return loadErr
	}
	s, ok := compiled[name]
	if !ok {
		return fmt.Errorf("no schema %q", name)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("payload is not JSON: %w", err)
	}
	return s.Validate(inst)
}

// Check fails t unless data validates against the schema name.
func Check(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := Validate(name, data); err != nil {
		t.Errorf("payload does not match %s: %v\npayload: %s", name, err, data)
	}
}

// CheckEnvelope validates a published event envelope against the schema of its
// detail-type, failing t if it has none.
func CheckEnvelope(t testing.TB, data []byte) {
	t.Helper()
	var env struct {
		DetailType string `json:"detail-type"`
	}
	if err := json.Unmarshal(data, &env); err != nil {
		t.Errorf("envelope is not JSON: %v", err)
		return
	}
	name := schemas.ForDetailType(env.DetailType)
	if name == "" {
		t.Errorf("no schema for detail-type %q", env.DetailType)
		return
	}
	Check(t, name, data)
}
