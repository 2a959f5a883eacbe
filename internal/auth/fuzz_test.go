package auth_test

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
)

// FuzzVerify drives both branches of the verifier. A fuzzed token: no input panics it, a
// refusal has a reason, and what it accepts carries a valid user id and was signed with
// the secret (HS256). Fuzzed claims, signed with the secret: the token is accepted exactly
// when the user id is valid and exp is in the future, and then the accepted id is the
// claim, byte for byte (the claims are written with the id's bytes as they are, so text
// that is not UTF-8 reaches the verifier unrewritten).
func FuzzVerify(f *testing.F) {
	good, _ := auth.Mint(secret, "1234", time.Hour, now)
	f.Add(good, "1234", int64(3600))
	f.Add("", "", int64(0))
	f.Add("a.b.c", "x,y", int64(3600))
	f.Add("eyJhbGciOiJub25lIn0.eyJ1c2VySWQiOiIxIn0.", " pad ", int64(3600))
	f.Add(good+"x", "\xff", int64(3600))
	f.Add(signedRaw(`{"userId":"\ud800","exp":4102444800}`), "\xfe", int64(60))
	f.Add(good, "\uFFFD", int64(-3600))
	f.Add(good, "u\"\\", int64(1))
	v, err := auth.NewVerifier(secret, auth.Policy{Leeway: auth.DefaultLeeway, Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, token, userID string, expIn int64) {
		uid, err := v.Verify(token)
		if err != nil {
			if auth.ReasonOf(err) == "" {
				t.Fatalf("refusal without a reason: %v", err)
			}
		} else {
			if events.ValidateUserID(uid) != nil {
				t.Fatalf("accepted user id %q", uid)
			}
			tok, _, perr := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
			if perr != nil || tok.Method.Alg() != "HS256" {
				t.Fatalf("accepted a token that is not HS256: %v", perr)
			}
		}

		expIn = expIn % (10 * 365 * 24 * 3600)
		if d := expIn + int64(auth.DefaultLeeway/time.Second); d >= -1 && d <= 1 {
			return // on the edge of the leeway: either answer is right
		}
		claims := fmt.Sprintf(`{"userId":%s,"exp":%d}`, rawQuote(userID), now.Unix()+expIn)
		uid, err = v.Verify(signedRaw(claims))
		want := events.ValidateUserID(userID) == nil && expIn > -int64(auth.DefaultLeeway/time.Second)
		switch {
		case want && err != nil:
			t.Fatalf("claims %s refused: %v", claims, err)
		case !want && err == nil:
			t.Fatalf("claims %s accepted as %q", claims, uid)
		case err == nil && uid != userID:
			t.Fatalf("accepted user id %q, the claim is %q", uid, userID)
		case err != nil && auth.ReasonOf(err) == "":
			t.Fatalf("refusal without a reason: %v", err)
		}
	})
}

// rawQuote writes s as a JSON string keeping its bytes as they are: only the quote, the
// backslash and control bytes are escaped, so bytes that are not UTF-8 stay in the text.
func rawQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20:
			fmt.Fprintf(&b, `\u%04x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// signedRaw signs the claims text as it is, with an HS256 header and the test secret.
func signedRaw(claims string) string {
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString([]byte(claims))
	sig, err := jwt.SigningMethodHS256.Sign(signing, secret)
	if err != nil {
		panic(err)
	}
	return signing + "." + enc.EncodeToString(sig)
}
