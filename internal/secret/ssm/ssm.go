// Package ssm reads the JWT secret from SSM Parameter Store (a SecureString, decrypted),
// caches it for a TTL, and lets a caller force a refresh when a signature fails, at most
// once per minimum interval, so a rotated secret is picked up without hammering SSM. A
// Source is safe for concurrent use.
package ssm

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// Source is one cached parameter.
type Source struct {
	client *ssm.Client
	name   string
	ttl    time.Duration
	// MinRefresh is the shortest time between two forced refreshes (default 1m).
	MinRefresh time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time

	mu        sync.Mutex
	value     string
	fetchedAt time.Time
	forcedAt  time.Time
}

// New returns a Source of the parameter name, cached for ttl.
func New(client *ssm.Client, name string, ttl time.Duration) *Source {
	return &Source{client: client, name: name, ttl: ttl, MinRefresh: time.Minute, Now: time.Now}
}

// Get returns the secret, from the cache while it is younger than the TTL.
func (s *Source) Get(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.value != "" && s.Now().Sub(s.fetchedAt) < s.ttl {
		return s.value, nil
	}
	return s.fetch(ctx)
}

// Refresh reads the parameter again unless a forced refresh happened within MinRefresh;
// it returns the current secret and whether it changed.
func (s *Source) Refresh(ctx context.Context) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.Now()
	if !s.forcedAt.IsZero() && now.Sub(s.forcedAt) < s.MinRefresh {
		return s.value, false, nil
	}
	s.forcedAt = now
	old := s.value
	v, err := s.fetch(ctx)
	return v, err == nil && v != old, err
}

func (s *Source) fetch(ctx context.Context) (string, error) {
	out, err := s.client.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(s.name), WithDecryption: aws.Bool(true)})
	if err != nil {
		return "", awsfail.Wrap("read parameter "+s.name, err)
	}
	if out.Parameter == nil || aws.ToString(out.Parameter.Value) == "" {
		return "", fmt.Errorf("parameter %s is empty", s.name)
	}
	s.value, s.fetchedAt = aws.ToString(out.Parameter.Value), s.Now()
	return s.value, nil
}
