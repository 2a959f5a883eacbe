package localrt

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// sigV4 is the Authorization of an AWS Signature Version 4 request, read before the body
// so that a request that cannot be genuine is refused without reading it.
type sigV4 struct {
	accessKey, date, region, service string
	signedHeaders                    []string
	signature                        string
	at                               time.Time
}

// parseSigV4 reads the request's Authorization and X-Amz-Date and checks what needs no
// body: the algorithm, the credential scope, that host and x-amz-date are signed, and
// that the date is within maxSignatureAge of now.
func parseSigV4(r *http.Request, now time.Time) (sigV4, error) {
	rest, ok := strings.CutPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ")
	if !ok {
		return sigV4{}, errors.New("not signed with AWS4-HMAC-SHA256")
	}
	fields := map[string]string{}
	for _, part := range strings.Split(rest, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(part), "="); ok {
			fields[k] = v
		}
	}
	scope := strings.Split(fields["Credential"], "/") // AKID/date/region/service/aws4_request
	if len(scope) != 5 || scope[4] != "aws4_request" || fields["SignedHeaders"] == "" || fields["Signature"] == "" {
		return sigV4{}, errors.New("malformed Authorization header")
	}
	s := sigV4{accessKey: scope[0], date: scope[1], region: scope[2], service: scope[3],
		signedHeaders: strings.Split(fields["SignedHeaders"], ";"), signature: fields["Signature"]}
	at, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		return sigV4{}, errors.New("missing or malformed X-Amz-Date")
	}
	s.at = at
	if at.Format("20060102") != s.date {
		return sigV4{}, errors.New("the credential's date is not X-Amz-Date's")
	}
	if d := now.Sub(at); d > maxSignatureAge || d < -maxSignatureAge {
		return sigV4{}, fmt.Errorf("X-Amz-Date is %s away from the server's clock", d.Round(time.Second))
	}
	signed := map[string]bool{}
	for i, h := range s.signedHeaders {
		if h != strings.ToLower(h) || (i > 0 && s.signedHeaders[i-1] >= h) {
			return sigV4{}, errors.New("SignedHeaders is not a sorted list of lowercase names")
		}
		signed[h] = true
	}
	if !signed["host"] || !signed["x-amz-date"] {
		return sigV4{}, errors.New("host and x-amz-date must be signed")
	}
	return s, nil
}

// verify checks the signature of r with body and secret: the canonical request is built
// from exactly the headers the client listed in SignedHeaders (clients differ in which
// they sign), as the service does.
func (s sigV4) verify(r *http.Request, body []byte, secret string) error {
	sum := sha256.Sum256(body)
	payload := hex.EncodeToString(sum[:])
	if h := r.Header.Get("X-Amz-Content-Sha256"); h != "" && h != payload {
		return errors.New("X-Amz-Content-Sha256 is not the body's hash")
	}
	var canon strings.Builder
	canon.WriteString(r.Method + "\n" + canonicalPath(r.URL) + "\n" + canonicalQuery(r.URL.Query()) + "\n")
	for _, h := range s.signedHeaders {
		v := strings.Join(r.Header.Values(h), ",")
		switch {
		case h == "host":
			v = r.Host
		case h == "content-length" && v == "" && r.ContentLength >= 0:
			v = strconv.FormatInt(r.ContentLength, 10)
		}
		canon.WriteString(h + ":" + strings.Join(strings.Fields(v), " ") + "\n")
	}
	canon.WriteString("\n" + strings.Join(s.signedHeaders, ";") + "\n" + payload)
	scope := s.date + "/" + s.region + "/" + s.service + "/aws4_request"
	creq := sha256.Sum256([]byte(canon.String()))
	toSign := "AWS4-HMAC-SHA256\n" + s.at.Format("20060102T150405Z") + "\n" + scope + "\n" + hex.EncodeToString(creq[:])
	key := []byte("AWS4" + secret)
	for _, part := range []string{s.date, s.region, s.service, "aws4_request"} {
		key = hmacSHA256(key, part)
	}
	want := hex.EncodeToString(hmacSHA256(key, toSign))
	if subtle.ConstantTimeCompare([]byte(want), []byte(s.signature)) != 1 {
		return errors.New("signature mismatch")
	}
	return nil
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// canonicalPath is the URI-encoded path, each segment encoded once more as the SigV4
// clients of every service but S3 do.
func canonicalPath(u *url.URL) string {
	p := u.EscapedPath()
	if p == "" {
		return "/"
	}
	segs := strings.Split(p, "/")
	for i, seg := range segs {
		segs[i] = uriEncode(seg, false)
	}
	return strings.Join(segs, "/")
}

func canonicalQuery(q url.Values) string {
	var parts []string
	for k, vs := range q {
		for _, v := range vs {
			parts = append(parts, uriEncode(k, true)+"="+uriEncode(v, true))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "&")
}

// uriEncode is SigV4's URI encoding: every byte but the unreserved characters as %XX.
func uriEncode(s string, encodeSlash bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		case c == '/' && !encodeSlash:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
