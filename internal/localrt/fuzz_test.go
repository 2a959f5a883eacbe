package localrt_test

import (
	"encoding/json"
	"testing"

	"github.com/wspresence/wspresence/internal/localrt"
)

// FuzzParseClientFrame: no client frame panics the server's frame reader, and an action is
// only read from a JSON object that names it as a string.
func FuzzParseClientFrame(f *testing.F) {
	f.Add([]byte(`{"action":"ping"}`))
	f.Add([]byte(`not json`))
	f.Add([]byte{0xff, 0xfe, 0x00})
	f.Add([]byte(`{"action":{"nested":true}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := localrt.ParseClientFrame(data)
		if fr.Action == "" {
			return
		}
		var probe map[string]any
		if err := json.Unmarshal(data, &probe); err != nil {
			t.Fatalf("action %q read from a frame that is not a JSON object", fr.Action)
		}
	})
}
