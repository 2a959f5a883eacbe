package localrt

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Names of the files in the data dir that keep generated secrets.
const (
	JWTSecretFile = "jwt-secret"
	APIKeyFile    = "api-key"
	// WebhookSecretFile keeps the generated secret that signs webhook requests.
	WebhookSecretFile = "webhook-secret"
)

// ErrNoSecret is returned by ReadSecret when the data dir holds no such secret.
var ErrNoSecret = errors.New("no secret in the data dir")

// ReadSecret reads the secret kept in dir/name.
func ReadSecret(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s in %s: %w", name, dir, ErrNoSecret)
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s in %s is empty: %w", name, dir, ErrNoSecret)
	}
	return s, nil
}

// LoadOrCreateSecret returns the secret kept in dir/name, generating 32 random bytes (hex)
// into a new file of mode 0600 when there is none.
func LoadOrCreateSecret(dir, name string) (string, error) {
	s, err := ReadSecret(dir, name)
	if !errors.Is(err, ErrNoSecret) {
		return s, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create data dir: %w", err)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate %s: %w", name, err)
	}
	s = hex.EncodeToString(b)
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Another process created it first: use theirs.
		return ReadSecret(dir, name)
	}
	if err != nil {
		return "", fmt.Errorf("create %s: %w", name, err)
	}
	if _, err := f.WriteString(s + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	return s, nil
}
