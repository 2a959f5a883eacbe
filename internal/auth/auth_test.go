package auth_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/wspresence/wspresence/internal/auth"
)

var (
	secret = []byte("0123456789abcdef0123456789abcdef")
	now    = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
)

func verifier(t *testing.T) *auth.Verifier {
	t.Helper()
	v, err := auth.NewVerifier(secret, auth.Policy{Leeway: auth.DefaultLeeway, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func sign(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func valid(extra map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{"userId": "1234", "exp": now.Add(time.Hour).Unix()}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func TestMintedTokenVerifies(t *testing.T) {
	tok, err := auth.Mint(secret, "user-42", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	uid, err := verifier(t).Verify(tok)
	if err != nil || uid != "user-42" {
		t.Fatalf("Verify = %q, %v", uid, err)
	}
}

func TestUserIDClaimForms(t *testing.T) {
	v := verifier(t)
	for name, tc := range map[string]struct {
		claim any
		want  string
	}{
		"string":       {"abc", "abc"},
		"number":       {1234, "1234"},
		"large number": {int64(9007199254740993), "9007199254740993"},
	} {
		t.Run(name, func(t *testing.T) {
			uid, err := v.Verify(sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"userId": tc.claim})))
			if err != nil || uid != tc.want {
				t.Fatalf("Verify = %q, %v; want %q", uid, err, tc.want)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	noneTok := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid(nil))
	cases := map[string]struct {
		token string
		want  auth.Reason
	}{
		"empty":            {"", auth.ReasonMissing},
		"garbage":          {"not.a.token", auth.ReasonMalformed},
		"two segments":     {"abc.def", auth.ReasonMalformed},
		"oversized":        {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"pad": strings.Repeat("x", auth.MaxTokenBytes)})), auth.ReasonTooLarge},
		"none":             {noneTok, auth.ReasonAlgorithm},
		"HS384":            {sign(t, jwt.SigningMethodHS384, secret, valid(nil)), auth.ReasonAlgorithm},
		"HS512":            {sign(t, jwt.SigningMethodHS512, secret, valid(nil)), auth.ReasonAlgorithm},
		"RS256":            {sign(t, jwt.SigningMethodRS256, rsaKey, valid(nil)), auth.ReasonAlgorithm},
		"ES256":            {sign(t, jwt.SigningMethodES256, ecKey, valid(nil)), auth.ReasonAlgorithm},
		"wrong secret":     {sign(t, jwt.SigningMethodHS256, []byte("another-secret-of-enough-length!"), valid(nil)), auth.ReasonSignature},
		"tampered":         {tamper(sign(t, jwt.SigningMethodHS256, secret, valid(nil))), auth.ReasonSignature},
		"expired":          {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"exp": now.Add(-time.Minute).Unix()})), auth.ReasonExpired},
		"not yet valid":    {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"nbf": now.Add(time.Minute).Unix()})), auth.ReasonNotYet},
		"no exp":           {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"exp": nil})), auth.ReasonNoExpiry},
		"no userId":        {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"userId": nil})), auth.ReasonUserID},
		"empty userId":     {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"userId": ""})), auth.ReasonUserID},
		"object userId":    {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"userId": map[string]any{"a": 1}})), auth.ReasonUserID},
		"fraction userId":  {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"userId": 1.5})), auth.ReasonUserID},
		"huge userId":      {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"userId": strings.Repeat("u", 300)})), auth.ReasonUserID},
		"control in id":    {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"userId": "a\nb"})), auth.ReasonUserID},
		"exp as string":    {sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"exp": "tomorrow"})), auth.ReasonMalformed},
		"original example": {"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwidXNlcklkIjoiMTIzNCIsImlhdCI6MjAxNjIzOTAyMiwiZXhwIjoyMDE2MjM5MDIyfQ.6C7xpaC9_vmadA72tABVkqXH9HWcPY4RE8dGALnT-Hw", auth.ReasonSignature},
	}
	for name, crit := range map[string]any{"unknown": []string{"exp-ext"}, "empty": []string{}, "registered": []string{"alg"}, "not a list": "x"} {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, valid(nil))
		tok.Header["crit"] = crit
		tok.Header["exp-ext"] = true
		s, err := tok.SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		cases["crit "+name] = struct {
			token string
			want  auth.Reason
		}{s, auth.ReasonCritical}
	}
	v := verifier(t)
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			uid, err := v.Verify(tc.token)
			if err == nil {
				t.Fatalf("accepted, user %q", uid)
			}
			if !errors.Is(err, auth.ErrUnauthorized) {
				t.Fatalf("error %v does not wrap ErrUnauthorized", err)
			}
			if got := auth.ReasonOf(err); got != tc.want {
				t.Fatalf("reason %q, want %q (%v)", got, tc.want, err)
			}
		})
	}
}

func TestLeeway(t *testing.T) {
	tok := sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"exp": now.Add(-10 * time.Second).Unix(), "nbf": now.Add(10 * time.Second).Unix()}))
	if _, err := verifier(t).Verify(tok); err != nil {
		t.Fatalf("token within leeway refused: %v", err)
	}
}

func TestShortSecretRefused(t *testing.T) {
	if _, err := auth.NewVerifier([]byte("short"), auth.Policy{}); err == nil {
		t.Fatal("short secret accepted")
	}
}

func TestBearerAndKey(t *testing.T) {
	for in, want := range map[string]string{"Bearer abc": "abc", "bearer  abc ": "abc", "abc": "abc", "": ""} {
		if got := auth.BearerToken(in); got != want {
			t.Errorf("BearerToken(%q) = %q, want %q", in, got, want)
		}
	}
	if !auth.KeyMatches("k1", "k1") || auth.KeyMatches("k1", "k2") || auth.KeyMatches("k1", "") {
		t.Error("KeyMatches is wrong")
	}
}

func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	parts[1] = strings.TrimRight(parts[1], "=") + "x"
	return strings.Join(parts, ".")
}

// Claims whose text is not UTF-8 are refused with their own reason, never rewritten into
// another user id.
func TestClaimsThatAreNotUTF8AreRefused(t *testing.T) {
	v := verifier(t)
	for _, claims := range []string{
		"{\"userId\":\"a\xff\",\"exp\":4102444800}",
		"{\"userId\":\"\xfe\",\"exp\":4102444800}",
		`{"userId":"\ud800","exp":4102444800}`,
		`{"userId":"a","exp":4102444800,"name":"\udc00"}`,
	} {
		uid, err := v.Verify(signedRaw(claims))
		if auth.ReasonOf(err) != auth.ReasonUTF8 {
			t.Errorf("%q: got %q, %v; want reason %s", claims, uid, err, auth.ReasonUTF8)
		}
	}
	uid, err := v.Verify(signedRaw("{\"userId\":\"\uFFFD\",\"exp\":4102444800}"))
	if err != nil || uid != "\uFFFD" {
		t.Fatalf("a literal U+FFFD id: %q, %v", uid, err)
	}
}

// Ids that could not be queried are refused at connect with the user_id reason.
func TestUnqueryableUserIDsAreRefused(t *testing.T) {
	v := verifier(t)
	for _, id := range []string{"x,y", " pad ", "pad\t"} {
		_, err := v.Verify(sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"userId": id})))
		if auth.ReasonOf(err) != auth.ReasonUserID {
			t.Errorf("%q: %v, want reason %s", id, err, auth.ReasonUserID)
		}
	}
}

// The migration settings: the longer HMACs and tokens without exp are accepted only when
// the policy says so; "none" and asymmetric algorithms never are, and cannot be listed.
func TestPolicySettings(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	noExp := valid(map[string]any{"exp": nil})
	tokens := map[string]string{
		"HS256":        sign(t, jwt.SigningMethodHS256, secret, valid(nil)),
		"HS384":        sign(t, jwt.SigningMethodHS384, secret, valid(nil)),
		"HS512":        sign(t, jwt.SigningMethodHS512, secret, valid(nil)),
		"HS256 no exp": sign(t, jwt.SigningMethodHS256, secret, noExp),
		"HS512 no exp": sign(t, jwt.SigningMethodHS512, secret, noExp),
		"none":         sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid(nil)),
		"RS256":        sign(t, jwt.SigningMethodRS256, rsaKey, valid(nil)),
	}
	clock := func() time.Time { return now }
	cases := []struct {
		policy auth.Policy
		accept map[string]bool
	}{
		{auth.Policy{Now: clock}, map[string]bool{"HS256": true}},
		{auth.Policy{Now: clock, Algorithms: []string{"HS256", "HS512"}}, map[string]bool{"HS256": true, "HS512": true}},
		{auth.Policy{Now: clock, Algorithms: []string{"HS384"}}, map[string]bool{"HS384": true}},
		{auth.Policy{Now: clock, ExpiryOptional: true}, map[string]bool{"HS256": true, "HS256 no exp": true}},
		{auth.Policy{Now: clock, ExpiryOptional: true, Algorithms: []string{"HS256", "HS384", "HS512"}},
			map[string]bool{"HS256": true, "HS384": true, "HS512": true, "HS256 no exp": true, "HS512 no exp": true}},
	}
	for _, c := range cases {
		v, err := auth.NewVerifier(secret, c.policy)
		if err != nil {
			t.Fatal(err)
		}
		for name, tok := range tokens {
			uid, err := v.Verify(tok)
			if c.accept[name] != (err == nil) {
				t.Errorf("policy %v, token %s: %q, %v", c.policy.Algorithms, name, uid, err)
			}
			if err != nil && !c.accept[name] {
				algs := c.policy.Algorithms
				if len(algs) == 0 {
					algs = []string{"HS256"}
				}
				want := auth.ReasonAlgorithm
				if slices.Contains(algs, strings.Fields(name)[0]) {
					want = auth.ReasonNoExpiry
				}
				if got := auth.ReasonOf(err); got != want {
					t.Errorf("policy %v, token %s: reason %s, want %s", c.policy.Algorithms, name, got, want)
				}
			}
		}
	}
	for _, bad := range []string{"none", "RS256", "ES256", "HS1", ""} {
		if _, err := auth.NewVerifier(secret, auth.Policy{Algorithms: []string{bad}}); err == nil {
			t.Errorf("algorithm %q could be listed", bad)
		}
	}
	if algs, err := auth.ParseAlgorithms(" hs256, HS512 "); err != nil || len(algs) != 2 || algs[1] != "HS512" {
		t.Errorf("ParseAlgorithms = %v, %v", algs, err)
	}
	if _, err := auth.ParseAlgorithms("HS256,RS256"); err == nil {
		t.Error("RS256 parsed")
	}
}
