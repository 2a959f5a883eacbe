package events

import (
	"errors"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"
)

// ErrInvalidUTF8 is wrapped by every refusal of text that is not valid UTF-8: raw bytes
// that are not UTF-8, or a JSON \u escape of an unpaired UTF-16 surrogate. encoding/json
// would silently turn either into U+FFFD, so two different ids could become one.
var ErrInvalidUTF8 = errors.New("invalid UTF-8")

// CheckJSONText returns an error wrapping ErrInvalidUTF8 when the JSON text data holds
// bytes that are not UTF-8 or a \u escape that decodes to no character (an unpaired
// surrogate). It does not otherwise validate the JSON: the decoder does that.
func CheckJSONText(data []byte) error {
	if !utf8.Valid(data) {
		return fmt.Errorf("%w: byte %d is not UTF-8", ErrInvalidUTF8, invalidOffset(data))
	}
	for i := 0; i < len(data); i++ {
		if data[i] != '\\' {
			continue
		}
		if i+1 < len(data) && data[i+1] != 'u' {
			i++ // a two-character escape such as \" or \\
			continue
		}
		r, ok := hex4(data, i+2)
		if !ok || !utf16.IsSurrogate(r) {
			i++
			continue
		}
		if r < 0xdc00 { // a high surrogate needs a low one right after it
			if i+7 < len(data) && data[i+6] == '\\' && data[i+7] == 'u' {
				if r2, ok := hex4(data, i+8); ok && utf16.DecodeRune(r, r2) != utf8.RuneError {
					i += 11
					continue
				}
			}
		}
		return fmt.Errorf("%w: the escape at byte %d is an unpaired surrogate", ErrInvalidUTF8, i)
	}
	return nil
}

// hex4 reads the four hex digits of a \u escape at data[i:].
func hex4(data []byte, i int) (rune, bool) {
	if i+4 > len(data) {
		return 0, false
	}
	var r rune
	for _, c := range data[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

func invalidOffset(data []byte) int {
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(data)
}
