package localrt

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/wspresence/wspresence/internal/auth"
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

// ErrUnusableSecret is returned by ReadSecret when the secret's file exists but holds
// nothing that was ever accepted as a secret: empty, shorter than auth.MinSecretBytes, or
// with control bytes (what a crash during an unsynced first write leaves behind).
var ErrUnusableSecret = errors.New("secret file holds no usable secret")

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
	switch {
	case s == "":
		return "", fmt.Errorf("%s in %s is empty: %w", name, dir, ErrUnusableSecret)
	case len(s) < auth.MinSecretBytes:
		return "", fmt.Errorf("%s in %s is %d bytes, at least %d needed: %w", name, dir, len(s), auth.MinSecretBytes, ErrUnusableSecret)
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "", fmt.Errorf("%s in %s holds control bytes: %w", name, dir, ErrUnusableSecret)
	}
	return s, nil
}

// LoadOrCreateSecret returns the secret kept in dir/name. When there is none it generates
// 32 random bytes (hex) and writes them atomically (a temporary file of mode 0600, fsync,
// then a link or rename into place and an fsync of the directory), so a crash leaves either
// no file or a whole one. A file that was never usable (ErrUnusableSecret, left by an
// older version that wrote in place) is replaced, and log says so; a usable one never is.
func LoadOrCreateSecret(dir, name string, log *slog.Logger) (string, error) {
	s, err := ReadSecret(dir, name)
	replace := errors.Is(err, ErrUnusableSecret)
	switch {
	case err == nil:
		return s, nil
	case replace:
		log.Warn("replacing a secret file that was never usable", "file", filepath.Join(dir, name), "reason", err.Error())
	case !errors.Is(err, ErrNoSecret):
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create data dir: %w", err)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate %s: %w", name, err)
	}
	s = hex.EncodeToString(b)
	created, err := writeAtomically(dir, name, []byte(s+"\n"), replace)
	if err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	if !created {
		// Another process created it first: use theirs.
		return ReadSecret(dir, name)
	}
	return s, nil
}

// writeAtomically makes dir/name hold data, whole and durable, or leaves it as it was. With
// replace false an existing file is kept and created is false.
func writeAtomically(dir, name string, data []byte, replace bool) (created bool, err error) {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*") // mode 0600
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	final := filepath.Join(dir, name)
	if replace {
		err = os.Rename(tmp.Name(), final)
	} else {
		err = os.Link(tmp.Name(), final) // fails if the file exists: never replaces
	}
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, syncDir(dir)
}

// syncDir makes a new or renamed directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
