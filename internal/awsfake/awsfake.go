// Package awsfake runs httptest servers that speak the wire protocol of the AWS services
// the runtime calls (the JSON protocols of EventBridge, Step Functions and SSM, the REST
// protocol of the API Gateway Management API), records every request, and answers what the
// test says, so adapters are tested through the real SDK clients, failures included.
package awsfake

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// Request is one recorded call.
type Request struct {
	Method, Path string
	// Target is the X-Amz-Target header of JSON-protocol calls ("AWSEvents.PutEvents").
	Target string
	Header http.Header
	Body   []byte
}

// Decode unmarshals the request body into v, failing t on error.
func (r Request) Decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %s %s body %q: %v", r.Target, r.Path, r.Body, err)
	}
}

// Response is what the fake answers.
type Response struct {
	Status int
	Header map[string]string
	Body   []byte
}

// JSON answers status with v as JSON.
func JSON(status int, v any) Response {
	b, _ := json.Marshal(v)
	return Response{Status: status, Body: b}
}

// Error answers an AWS error of the given code, in both the JSON protocols' body form and
// the REST protocols' header form.
func Error(status int, code, message string) Response {
	b, _ := json.Marshal(map[string]string{"__type": code, "message": message})
	return Response{Status: status, Header: map[string]string{"X-Amzn-Errortype": code}, Body: b}
}

// Server is a fake service.
type Server struct {
	*httptest.Server
	mu       sync.Mutex
	requests []Request
	answer   func(Request) Response
}

// New starts a fake whose answers come from answer (called for every request, in order),
// and stops it when t ends.
func New(t testing.TB, answer func(Request) Response) *Server {
	s := &Server{answer: answer}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req := Request{Method: r.Method, Path: r.URL.Path, Target: r.Header.Get("X-Amz-Target"), Header: r.Header.Clone(), Body: body}
		s.mu.Lock()
		s.requests = append(s.requests, req)
		answer := s.answer
		s.mu.Unlock()
		resp := answer(req)
		for k, v := range resp.Header {
			w.Header().Set(k, v)
		}
		if w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		}
		w.WriteHeader(resp.Status)
		_, _ = w.Write(resp.Body)
	}))
	t.Cleanup(s.Close)
	return s
}

// SetAnswer replaces the answering function.
func (s *Server) SetAnswer(answer func(Request) Response) {
	s.mu.Lock()
	s.answer = answer
	s.mu.Unlock()
}

// Requests returns the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Config returns an SDK configuration that reaches this server (static credentials,
// us-east-1, the SDK's own retries off so tests count every call).
func (s *Server) Config() aws.Config {
	return Config(s.URL)
}

// Config returns an SDK configuration for an endpoint.
func Config(endpoint string) aws.Config {
	return aws.Config{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
		BaseEndpoint: aws.String(endpoint),
		Retryer:      func() aws.Retryer { return aws.NopRetryer{} },
	}
}
