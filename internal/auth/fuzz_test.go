package auth_test

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
)

// FuzzVerify: no input panics the verifier, and whatever it accepts carries a valid user id
// and was signed with the secret (HS256).
func FuzzVerify(f *testing.F) {
	good, _ := auth.Mint(secret, "1234", time.Hour, now)
	f.Add(good)
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIn0.eyJ1c2VySWQiOiIxIn0.")
	f.Add(good + "x")
	v, err := auth.NewVerifier(secret, auth.DefaultLeeway, func() time.Time { return now })
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, token string) {
		uid, err := v.Verify(token)
		if err != nil {
			if auth.ReasonOf(err) == "" {
				t.Fatalf("refusal without a reason: %v", err)
			}
			return
		}
		if events.ValidateUserID(uid) != nil {
			t.Fatalf("accepted user id %q", uid)
		}
		tok, _, perr := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
		if perr != nil || tok.Method.Alg() != "HS256" {
			t.Fatalf("accepted a token that is not HS256: %v", perr)
		}
	})
}
