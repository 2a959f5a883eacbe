package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/localrt"
	"github.com/wspresence/wspresence/internal/onlineapi"
)

var flagErrHelp = flag.ErrHelp

// secretFrom resolves a secret: the flag or environment value, else the file the server
// keeps in the data dir.
func secretFrom(value, dataDir, file, what, flagName, envName string) (string, error) {
	if value != "" {
		return value, nil
	}
	s, err := localrt.ReadSecret(dataDir, file)
	if errors.Is(err, localrt.ErrNoSecret) || errors.Is(err, localrt.ErrUnusableSecret) {
		return "", fmt.Errorf("no %s: pass --%s, set %s, or run `wspresence serve` once so one is generated in %s",
			what, flagName, envName, dataDir)
	}
	return s, err
}

func token(_ context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	var user, secret string
	ttl := time.Hour
	dataDir := localrt.DefaultConfig().DataDir
	f := newFlags("token", "token --user ID [--ttl 1h] [--jwt-secret S]", stderr, getenv)
	f.String(&user, "user", "", "user id carried in the userId claim (required)")
	f.Duration(&ttl, "ttl", "", "validity of the token")
	f.String(&secret, "jwt-secret", "WSPRESENCE_JWT_SECRET", "HS256 secret (else the one in the data dir)")
	f.String(&dataDir, "data", "WSPRESENCE_DATA", "data directory of the server")
	if err := f.parse(args); err != nil {
		return err
	}
	if user == "" {
		return errors.New("--user is required")
	}
	secret, err := secretFrom(secret, dataDir, localrt.JWTSecretFile, "JWT secret", "jwt-secret", "WSPRESENCE_JWT_SECRET")
	if err != nil {
		return err
	}
	tok, err := auth.Mint([]byte(secret), user, ttl, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// backendClient calls the backend endpoints of a running server.
type backendClient struct {
	base, key string
	http      *http.Client
}

func clientFlags(f *flags, c *backendClient, dataDir *string) {
	c.base = "http://127.0.0.1:8080"
	f.String(&c.base, "url", "WSPRESENCE_URL", "base URL of the server")
	f.String(&c.key, "api-key", "WSPRESENCE_API_KEY", "API key (else the one in the data dir)")
	f.String(dataDir, "data", "WSPRESENCE_DATA", "data directory of the server")
}

func (c *backendClient) ready(dataDir string) error {
	key, err := secretFrom(c.key, dataDir, localrt.APIKeyFile, "API key", "api-key", "WSPRESENCE_API_KEY")
	if err != nil {
		return err
	}
	c.key, c.base = key, strings.TrimRight(c.base, "/")
	c.http = &http.Client{Timeout: 30 * time.Second}
	return nil
}

// do sends the request and returns the body of a 2xx answer, or the server's error.
func (c *backendClient) do(ctx context.Context, method, path string, body []byte) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("X-Api-Key", c.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Code, Message string }
		if json.Unmarshal(data, &e) == nil && e.Code != "" {
			return nil, nil, fmt.Errorf("%s: %s (%s)", resp.Status, e.Message, e.Code)
		}
		return nil, nil, fmt.Errorf("%s", resp.Status)
	}
	return data, resp.Header, nil
}

func send(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	var c backendClient
	var users []string
	var body, messageID string
	dataDir := localrt.DefaultConfig().DataDir
	f := newFlags("send", "send --user ID --body TEXT [--api-key K]", stderr, getenv)
	f.List(&users, "user", "", "recipient user id (several: a,b,c)")
	f.String(&body, "body", "", "message body, delivered as one text frame (required)")
	f.String(&messageID, "message-id", "", "idempotency id of the message (generated if empty)")
	clientFlags(f, &c, &dataDir)
	if err := f.parse(args); err != nil {
		return err
	}
	if len(users) == 0 {
		return errors.New("--user is required")
	}
	if err := c.ready(dataDir); err != nil {
		return err
	}
	msg := events.Message{MessageID: messageID, Body: body}
	if len(users) == 1 {
		msg.UserID = users[0]
	} else {
		msg.UserIDs = users
	}
	payload, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	data, _, err := c.do(ctx, http.MethodPost, "/messages", payload)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, strings.TrimSpace(string(data)))
	return nil
}

func online(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	var c backendClient
	var users []string
	var next string
	limit := 0
	dataDir := localrt.DefaultConfig().DataDir
	f := newFlags("online", "online [--users a,b] [--api-key K]", stderr, getenv)
	f.List(&users, "users", "", "user ids to report on (else the online list)")
	f.Int(&limit, "limit", "", "page size of the online list (0: server default)")
	f.String(&next, "next-token", "", "token of the page to read (from a previous answer)")
	clientFlags(f, &c, &dataDir)
	if err := f.parse(args); err != nil {
		return err
	}
	if err := c.ready(dataDir); err != nil {
		return err
	}
	q := url.Values{}
	if len(users) > 0 {
		q.Set("userIds", strings.Join(users, ","))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if next != "" {
		q.Set("nextToken", next)
	}
	path := "/user/online"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	data, hdr, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, data, "", "  "); err != nil {
		return fmt.Errorf("server answered something that is not JSON: %w", err)
	}
	fmt.Fprintln(stdout, strings.TrimSpace(pretty.String()))
	if t := hdr.Get(onlineapi.NextTokenHeader); t != "" {
		fmt.Fprintf(stderr, "more: --next-token %s\n", t)
	}
	return nil
}
