package localrt_test

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/wspresence/wspresence/internal/localrt"
)

// FuzzParseClientFrame asserts ParseClientFrame's documented property: no frame panics it;
// an action is valid UTF-8 and is the string value of the object's exact "action" member;
// and a frame that is a JSON object of plain UTF-8 text (no \u escapes) with a string
// action always yields that action.
func FuzzParseClientFrame(f *testing.F) {
	f.Add([]byte(`{"action":"ping"}`))
	f.Add([]byte(`not json`))
	f.Add([]byte{0xff, 0xfe, 0x00})
	f.Add([]byte(`{"action":{"nested":true}}`))
	f.Add([]byte(`{"ACTION":"ping"}`))
	f.Add([]byte(`{"action":"a","action":"b"}`))
	f.Add([]byte("{\"action\":\"p\xffng\"}"))
	f.Add([]byte(`{"action":"\ud800"}`))
	f.Add([]byte(`["action","ping"]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := localrt.ParseClientFrame(data)
		var members map[string]any
		decodes := json.Unmarshal(data, &members) == nil && members != nil
		want, isString := members["action"].(string)
		if fr.Action != "" {
			if !utf8.ValidString(fr.Action) || !utf8.Valid(data) {
				t.Fatalf("action %q read from text that is not UTF-8: %q", fr.Action, data)
			}
			if !decodes || !isString || want != fr.Action {
				t.Fatalf("action %q, but the frame's action member is %v (%q)", fr.Action, members["action"], data)
			}
		}
		if decodes && isString && utf8.Valid(data) && !bytes.Contains(data, []byte(`\u`)) && fr.Action != want {
			t.Fatalf("frame %q: action %q, want %q", data, fr.Action, want)
		}
	})
}
