package localrt

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Webhook request headers.
const (
	// WebhookSignatureHeader carries "sha256=" and the hex HMAC-SHA256, keyed with the
	// webhook secret, of the timestamp header's value, a dot, and the body.
	WebhookSignatureHeader = "X-Wspresence-Signature"
	// WebhookTimestampHeader carries the Unix time of the request, in seconds.
	WebhookTimestampHeader = "X-Wspresence-Timestamp"
	// WebhookEventIDHeader carries the event's id (de-duplicate on it).
	WebhookEventIDHeader = "X-Wspresence-Event-Id"
)

// SignWebhook returns the signature header value of a webhook request.
func SignWebhook(secret []byte, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(timestamp))
	mac.Write([]byte("."))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// webhook POSTs every published event to url, one per request, in outbox order. An
// event is acknowledged (and the cursor, kept in the store, moves past it) only on a 2xx
// answer; anything else is retried with backoff, so delivery is at least once and a
// restart resumes after the last acknowledged event.
func (s *Server) webhook(ctx context.Context, url string) {
	name := "webhook:" + url
	client := &http.Client{Timeout: 10 * time.Second}
	cursor, err := s.outbox.Cursor(ctx, name)
	if err != nil {
		s.log.Error("webhook cursor", "url", url, "err", err)
		return
	}
	backoff := time.Duration(0)
	for {
		wait := s.bus.wait()
		recs, err := s.outbox.PublishedSince(ctx, cursor, 100)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("webhook outbox", "url", url, "err", err)
			}
			return
		}
		if len(recs) > 0 && recs[0].Seq > cursor+1 {
			// The outbox pruned what this webhook had not taken yet: it goes on from the
			// oldest kept, and says what it missed.
			missed := recs[0].Seq - cursor - 1
			s.metrics.webhookMissed.Add(float64(missed))
			s.log.Error("webhook lagged past the outbox retention: events skipped", "url", url, "missed", missed,
				"from", cursor+1, "to", recs[0].Seq-1)
		}
		for _, rec := range recs {
			if err := s.post(ctx, client, url, rec.Envelope, string(rec.DetailType)); err != nil {
				if ctx.Err() != nil {
					return
				}
				backoff = min(max(backoff*2, 100*time.Millisecond), time.Minute)
				s.log.Warn("webhook failed, will retry", "url", url, "seq", rec.Seq, "in", backoff.String(), "err", err)
				break
			}
			backoff = 0
			cursor = rec.Seq
			if err := s.outbox.SetCursor(ctx, name, cursor); err != nil && ctx.Err() == nil {
				s.log.Error("webhook cursor", "url", url, "err", err)
			}
		}
		if backoff > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		if len(recs) == 100 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-wait:
		}
	}
}

func (s *Server) post(ctx context.Context, client *http.Client, url string, body []byte, detailType string) error {
	var env struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(body, &env)
	ts := strconv.FormatInt(s.now().Unix(), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "wspresence-webhook")
	req.Header.Set(WebhookTimestampHeader, ts)
	req.Header.Set(WebhookEventIDHeader, env.ID)
	req.Header.Set("X-Wspresence-Detail-Type", detailType)
	req.Header.Set(WebhookSignatureHeader, SignWebhook([]byte(s.cfg.WebhookSecret), ts, body))
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	return nil
}
