// Package lambdatest loads the real event payloads in the repository's testdata/ folder
// for handler tests, filling {{NAME}} placeholders (a fresh token, say).
package lambdatest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Root returns the repository root (the folder holding go.mod).
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's folder")
		}
		dir = parent
	}
}

// Raw returns testdata/name with each {{KEY}} replaced by vars[KEY].
func Raw(t testing.TB, name string, vars map[string]string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(Root(t), "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for k, v := range vars {
		s = strings.ReplaceAll(s, "{{"+k+"}}", v)
	}
	return []byte(s)
}

// Load decodes testdata/name (placeholders filled) into v.
func Load(t testing.TB, name string, vars map[string]string, v any) {
	t.Helper()
	if err := json.Unmarshal(Raw(t, name, vars), v); err != nil {
		t.Fatalf("decode testdata/%s: %v", name, err)
	}
}
