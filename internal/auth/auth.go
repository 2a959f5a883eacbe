package auth

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/wspresence/wspresence/events"
)

// ErrUnauthorized is wrapped by every refusal of a token or key.
var ErrUnauthorized = errors.New("unauthorized")

// Reason classifies a refusal.
type Reason string

// The reasons a token is refused.
const (
	ReasonMissing   Reason = "missing"
	ReasonTooLarge  Reason = "too_large"
	ReasonMalformed Reason = "malformed"
	ReasonAlgorithm Reason = "algorithm"
	ReasonSignature Reason = "signature"
	ReasonExpired   Reason = "expired"
	ReasonNotYet    Reason = "not_yet_valid"
	ReasonNoExpiry  Reason = "no_expiry"
	ReasonUserID    Reason = "user_id"
	// ReasonUTF8: the claims hold text that is not UTF-8 (raw bytes or an escaped
	// unpaired surrogate), which a JSON decoder would rewrite to U+FFFD.
	ReasonUTF8 Reason = "invalid_utf8"
	// ReasonCritical: the header's "crit" parameter names extensions that must be
	// understood (RFC 7515, section 4.1.11); this verifier understands none.
	ReasonCritical Reason = "critical_header"
)

// Error is a refusal: it wraps ErrUnauthorized and says why.
type Error struct {
	Reason Reason
	err    error
}

// Error implements error.
func (e *Error) Error() string {
	if e.err == nil {
		return fmt.Sprintf("unauthorized: %s", e.Reason)
	}
	return fmt.Sprintf("unauthorized: %s: %v", e.Reason, e.err)
}

// Unwrap lets errors.Is match ErrUnauthorized and the underlying cause.
func (e *Error) Unwrap() []error { return []error{ErrUnauthorized, e.err} }

// ReasonOf returns the reason of a refusal, or "" if err is not one.
func ReasonOf(err error) Reason {
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Reason
	}
	return ""
}

// MaxTokenBytes bounds the size of a token accepted for parsing.
const MaxTokenBytes = 8 * 1024

// DefaultLeeway is the clock skew tolerated on exp and nbf.
const DefaultLeeway = 30 * time.Second

// MinSecretBytes is the shortest HS256 secret accepted.
const MinSecretBytes = 16

// The HMAC algorithms a Policy may accept. "none" and the asymmetric algorithms (RS*, PS*,
// ES*, EdDSA) are never accepted: the secret is shared, so only an HMAC proves anything.
var hmacMethods = map[string]*jwt.SigningMethodHMAC{
	"HS256": jwt.SigningMethodHS256,
	"HS384": jwt.SigningMethodHS384,
	"HS512": jwt.SigningMethodHS512,
}

// Policy is what a Verifier accepts besides a good signature. The zero value accepts HS256
// with exp required and no leeway; DefaultPolicy adds the default leeway.
type Policy struct {
	// Leeway is the clock skew tolerated on exp and nbf.
	Leeway time.Duration
	// Algorithms lists the accepted algorithms, among HS256, HS384 and HS512; empty means
	// HS256 only. The longer HMACs are for tokens minted for the original service.
	Algorithms []string
	// ExpiryOptional accepts tokens without an exp claim, as the original service did
	// (a migration setting: such a token is valid forever). By default exp is required.
	ExpiryOptional bool
	// Now is the clock (nil means time.Now).
	Now func() time.Time
}

// DefaultPolicy is HS256 only, exp required, DefaultLeeway.
func DefaultPolicy() Policy { return Policy{Leeway: DefaultLeeway, Algorithms: []string{"HS256"}} }

// Validate reports every problem of p at once.
func (p Policy) Validate() error {
	var errs []error
	for _, a := range p.Algorithms {
		if _, ok := hmacMethods[a]; !ok {
			errs = append(errs, fmt.Errorf("jwt algorithm %q: want HS256, HS384 or HS512", a))
		}
	}
	if p.Leeway < 0 {
		errs = append(errs, fmt.Errorf("jwt leeway must not be negative, got %s", p.Leeway))
	}
	return errors.Join(errs...)
}

// ParseAlgorithms reads a comma-separated list of algorithms ("HS256,HS512") and checks it.
func ParseAlgorithms(list string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(list, ",") {
		if a = strings.ToUpper(strings.TrimSpace(a)); a != "" {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("jwt algorithms: the list is empty")
	}
	return out, Policy{Algorithms: out}.Validate()
}

// Verifier validates user tokens signed with one secret under a Policy.
type Verifier struct {
	secret  []byte
	parser  *jwt.Parser
	methods map[jwt.SigningMethod]bool
}

// NewVerifier returns a Verifier for secret under policy p.
func NewVerifier(secret []byte, p Policy) (*Verifier, error) {
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("jwt secret is %d bytes, at least %d needed", len(secret), MinSecretBytes)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	algs := p.Algorithms
	if len(algs) == 0 {
		algs = []string{"HS256"}
	}
	methods := map[jwt.SigningMethod]bool{}
	for _, a := range algs {
		methods[hmacMethods[a]] = true
	}
	opts := []jwt.ParserOption{jwt.WithLeeway(p.Leeway), jwt.WithJSONNumber()}
	if !p.ExpiryOptional {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	if p.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(p.Now))
	}
	return &Verifier{secret: append([]byte(nil), secret...), parser: jwt.NewParser(opts...), methods: methods}, nil
}

// Verify checks token and returns its user id. The userId claim may be a string or a
// number (rendered in decimal, as the original service accepted it).
func (v *Verifier) Verify(token string) (string, error) {
	switch {
	case token == "":
		return "", &Error{Reason: ReasonMissing}
	case len(token) > MaxTokenBytes:
		return "", &Error{Reason: ReasonTooLarge}
	}
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		// Only the policy's HMACs: "none", RS*, ES* and the others are refused before any
		// check of the signature.
		if !v.methods[t.Method] {
			return nil, errAlgorithm
		}
		if _, ok := t.Header["crit"]; ok {
			return nil, errCritical
		}
		return v.secret, nil
	})
	if err != nil {
		return "", &Error{Reason: classify(err), err: err}
	}
	// The signature holds, so the token is well formed: check the claims' raw text, which
	// the JSON decoder has already read with any invalid text rewritten.
	payload, err := v.parser.DecodeSegment(strings.Split(token, ".")[1])
	if err != nil {
		return "", &Error{Reason: ReasonMalformed, err: err}
	}
	if err := events.CheckJSONText(payload); err != nil {
		return "", &Error{Reason: ReasonUTF8, err: err}
	}
	uid, err := userID(claims["userId"])
	if err != nil {
		return "", &Error{Reason: ReasonUserID, err: err}
	}
	return uid, nil
}

var (
	errAlgorithm = errors.New("signing algorithm is not accepted")
	// errCritical refuses any "crit" header: it names extensions the recipient must
	// understand or reject the token, and none is understood here.
	errCritical = errors.New("the token names critical header extensions, none of which is understood")
)

func classify(err error) Reason {
	switch {
	case errors.Is(err, errCritical):
		return ReasonCritical
	case errors.Is(err, errAlgorithm), errors.Is(err, jwt.ErrTokenUnverifiable):
		return ReasonAlgorithm
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ReasonSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		return ReasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ReasonNotYet
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return ReasonNoExpiry
	}
	return ReasonMalformed
}

func userID(v any) (string, error) {
	var id string
	switch x := v.(type) {
	case nil:
		return "", errors.New("userId claim is missing")
	case string:
		id = x
	case json.Number:
		if _, err := x.Int64(); err != nil {
			return "", errors.New("userId claim is not an integer")
		}
		id = x.String()
	default:
		return "", fmt.Errorf("userId claim is a %T, not a string or number", v)
	}
	if err := events.ValidateUserID(id); err != nil {
		return "", fmt.Errorf("userId claim: %w", err)
	}
	return id, nil
}

// Mint signs a token for userID valid for ttl from now, with iat, nbf and exp set.
func Mint(secret []byte, userID string, ttl time.Duration, now time.Time) (string, error) {
	if err := events.ValidateUserID(userID); err != nil {
		return "", err
	}
	if ttl <= 0 {
		return "", errors.New("ttl must be positive")
	}
	claims := jwt.MapClaims{
		"userId": userID,
		"iat":    now.Unix(),
		"nbf":    now.Unix(),
		"exp":    now.Add(ttl).Unix(),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// BearerToken returns the token of an "Authorization: Bearer <token>" header value, or
// the value itself when it has no scheme (the original service's query-string form).
func BearerToken(header string) string {
	if scheme, rest, ok := strings.Cut(header, " "); ok && strings.EqualFold(scheme, "bearer") {
		return strings.TrimSpace(rest)
	}
	return strings.TrimSpace(header)
}

// Header returns the value of the header name in headers, matching the name without regard
// to case (API Gateway passes headers as they came, or lower-cased in payload 2.0).
func Header(headers map[string]string, name string) string {
	if v, ok := headers[name]; ok {
		return v
	}
	for k, v := range headers {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// KeyMatches reports whether got equals the API key want, in constant time.
func KeyMatches(want, got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(want), []byte(got)) == 1
}
