package events

import (
	"encoding/json"
	"strconv"
	"time"
)

// AppendEnvelope appends to b the JSON of p's EventBridge envelope (NewEnvelope's), the
// bytes json.Marshal writes for it, without reflection for the common case: every text of
// the envelope and of a MessageDelivered or MessageUndeliverable detail plain ASCII that
// needs no escape. Anything else is encoded by json.Marshal.
func AppendEnvelope(b []byte, p Published, account, region string, at time.Time) ([]byte, error) {
	start := len(b)
	t := at.UTC().Truncate(time.Second)
	if plain(p.ID()) && plain(string(p.DetailType())) && plain(account) && plain(region) && jsonTime(t) {
		b = AppendEnvelopeHead(b, p.ID(), string(p.DetailType()), account, region, t)
		if d, ok := appendDetail(b, p); ok {
			return append(d, '}'), nil
		}
		detail, err := json.Marshal(p)
		if err != nil {
			return b[:start], err
		}
		return append(append(b, detail...), '}'), nil
	}
	env, err := NewEnvelope(p, account, region, at)
	if err != nil {
		return b, err
	}
	data, err := json.Marshal(env)
	if err != nil {
		return b, err
	}
	return append(b, data...), nil
}

// appendDetail appends p's detail as json.Marshal writes it, for the outcome events whose
// texts are all plain; ok is false (b unchanged in its length) for any other.
func appendDetail(b []byte, p Published) ([]byte, bool) {
	switch e := p.(type) {
	case MessageDelivered:
		if !plain(e.EventID) || !plain(e.MessageID) || !plain(e.UserID) || !jsonTime(e.At) {
			return b, false
		}
		b = appendMessageIDs(b, e.EventID, e.MessageID, e.UserID)
		b = append(b, `,"connections":`...)
		b = strconv.AppendInt(b, int64(e.Connections), 10)
		b = append(b, `,"at":`...)
		return append(appendTime(b, e.At), '}'), true
	case MessageUndeliverable:
		if !plain(e.EventID) || !plain(e.MessageID) || !plain(e.UserID) || !plain(string(e.Reason)) || !jsonTime(e.At) {
			return b, false
		}
		b = appendMessageIDs(b, e.EventID, e.MessageID, e.UserID)
		b = append(b, `,"reason":"`...)
		b = append(b, e.Reason...)
		b = append(b, `","at":`...)
		return append(appendTime(b, e.At), '}'), true
	}
	return b, false
}

func appendMessageIDs(b []byte, eventID, messageID, userID string) []byte {
	b = append(b, `{"eventId":"`...)
	b = append(b, eventID...)
	b = append(b, `","messageId":"`...)
	b = append(b, messageID...)
	b = append(b, `","userId":"`...)
	b = append(b, userID...)
	return append(b, '"')
}

// plain reports whether s is written as itself inside JSON quotes: printable ASCII with no
// quote, backslash or character json.Marshal escapes for HTML.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// jsonTime reports whether t has a JSON encoding (time.Time.MarshalJSON refuses years
// outside 0-9999).
func jsonTime(t time.Time) bool {
	y := t.Year()
	return y >= 0 && y <= 9999
}

// AppendEnvelopeHead appends what AppendEnvelope writes of the envelope of the event id of
// type detailType at t (UTC, whole seconds) before its detail, up to `"detail":`: the
// envelope is that, the detail's JSON and a closing brace. Its texts must need no JSON
// escape (plain ASCII, no quote, backslash or HTML character), as AppendEnvelope checks.
func AppendEnvelopeHead(b []byte, id, detailType, account, region string, t time.Time) []byte {
	b = append(b, `{"version":"0","id":"`...)
	b = append(b, id...)
	b = append(b, `","detail-type":"`...)
	b = append(b, detailType...)
	b = append(b, `","source":"`+Source+`","account":"`...)
	b = append(b, account...)
	b = append(b, `","time":`...)
	b = appendTime(b, t)
	b = append(b, `,"region":"`...)
	b = append(b, region...)
	return append(b, `","resources":[],"detail":`...)
}

// appendTime appends t as time.Time.MarshalJSON writes it.
func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}
