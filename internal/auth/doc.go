// Package auth validates and mints the end users' JSON Web Tokens and checks the backend
// API key. Tokens are HS256 only, must carry a userId claim and an expiry, and are bounded
// in size; every refusal wraps ErrUnauthorized and carries a Reason fit for metrics and
// logs (never the token). A Verifier is safe for concurrent use.
package auth
