package events_test

import (
	"errors"
	"testing"

	"github.com/wspresence/wspresence/events"
)

func TestCheckJSONText(t *testing.T) {
	cases := []struct {
		name string
		text string
		ok   bool
	}{
		{"ascii", `{"a":"b"}`, true},
		{"literal replacement character", "{\"a\":\"\uFFFD\"}", true},
		{"escaped replacement character", `{"a":"\ufffd"}`, true},
		{"surrogate pair", `{"a":"\ud83d\ude00"}`, true},
		{"upper-case pair", `{"a":"\uD83D\uDE00"}`, true},
		{"escaped backslash before u", `{"a":"\\ud800"}`, true},
		{"raw 0xff", "{\"a\":\"\xff\"}", false},
		{"raw 0xfe", "{\"a\":\"\xfe\"}", false},
		{"truncated sequence", "{\"a\":\"\xc3\"}", false},
		{"lone high surrogate", `{"a":"\ud800"}`, false},
		{"lone low surrogate", `{"a":"\udc00"}`, false},
		{"high then non-surrogate", `{"a":"\ud800\u0041"}`, false},
		{"two high surrogates", `{"a":"\ud800\ud800"}`, false},
		{"high at end", `"\ud83d`, false},
	}
	for _, c := range cases {
		err := events.CheckJSONText([]byte(c.text))
		if c.ok && err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if !c.ok && !errors.Is(err, events.ErrInvalidUTF8) {
			t.Errorf("%s: got %v, want ErrInvalidUTF8", c.name, err)
		}
	}
}

// Three message ids that a decoder rewriting invalid text would make one: each is refused
// or kept exactly, never turned into another.
func TestInvalidUTF8IsRefusedNotRewritten(t *testing.T) {
	for _, body := range []string{
		"{\"MessageId\":\"\xff\",\"UserId\":\"a\",\"Body\":\"x\"}",
		"{\"MessageId\":\"\xfe\",\"UserId\":\"a\",\"Body\":\"x\"}",
		`{"MessageId":"\ud800","UserId":"a","Body":"x"}`,
		"{\"MessageId\":\"m\",\"UserId\":\"a\xff\",\"Body\":\"x\"}",
		"{\"MessageId\":\"m\",\"UserId\":\"a\",\"Body\":\"x\xff\"}",
		"[{\"UserIds\":[\"a\",\"b\xc3\"],\"Body\":\"x\"}]",
		`{"UserId":"a","Body":"\udfff"}`,
	} {
		_, err := events.DecodeMessages([]byte(body), 10)
		if !errors.Is(err, events.ErrInvalidUTF8) || !errors.Is(err, events.ErrInvalidMessage) {
			t.Errorf("%q: got %v, want ErrInvalidUTF8 and ErrInvalidMessage", body, err)
		}
		if _, err := events.DecodeMessage([]byte(body)); !errors.Is(err, events.ErrInvalidUTF8) && body[0] != '[' {
			t.Errorf("DecodeMessage %q: got %v, want ErrInvalidUTF8", body, err)
		}
	}
	m, err := events.DecodeMessage([]byte("{\"MessageId\":\"\uFFFD\",\"UserId\":\"a\",\"Body\":\"x\"}"))
	if err != nil || m.MessageID != "\uFFFD" {
		t.Fatalf("a literal U+FFFD id: %+v, %v", m, err)
	}
}

func TestUserIDRule(t *testing.T) {
	for _, id := range []string{"1234", "user@example.com", "a b", "Ünïcödé", "x;y", "%2C", "a+b"} {
		if err := events.ValidateUserID(id); err != nil {
			t.Errorf("%q refused: %v", id, err)
		}
	}
	for _, id := range []string{"", "x,y", " pad ", "pad ", "\tpad", "pad\u00a0", "\u3000pad", "a\x00", "a\x7f", "a\u0085b", "a\u009bb", "a\u0080", "\u009f", "\xff", string(make([]byte, events.MaxUserIDBytes+1))} {
		if err := events.ValidateUserID(id); err == nil {
			t.Errorf("%q accepted", id)
		}
	}
	if err := events.ValidateUserID("a\xff"); !errors.Is(err, events.ErrInvalidUTF8) {
		t.Errorf("invalid UTF-8 id: %v, want ErrInvalidUTF8", err)
	}
}
