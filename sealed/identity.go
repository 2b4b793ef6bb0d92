// Package sealed holds the agent's age identity, with which configurations carry values only this
// gateway can read (CONTRACT section 6, "Sealed values").
package sealed

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"filippo.io/age"
)

// FileName is the identity's file in the state folder.
const FileName = "identity"

// maxIdentityFile bounds what is read of the identity file: a few keys kept for a rotation are a
// few hundred bytes.
const maxIdentityFile = 64 << 10

// Identity is the agent's age identity: the keys that decrypt sealed values. The first key is the
// current one, whose recipient is published; keys after it are older ones kept while a rotation
// is under way, so that configurations sealed to them still open.
type Identity struct {
	keys []age.Identity
	rcpt string
}

// Recipient is the current key's recipient (age1...), to which configurations are sealed.
func (id *Identity) Recipient() string { return id.rcpt }

// Load reads the identity in dir. With create, a missing identity is made (0600); without it, a
// missing one is an error: the caller passes create only when no identity was ever made for the
// state folder, because a new key would silently break every configuration sealed to the old one.
func Load(dir string, create bool) (*Identity, error) {
	path := filepath.Join(dir, FileName)
	id, err := Read(path)
	switch {
	case err == nil:
		return id, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	case !create:
		return nil, fmt.Errorf("identity %s is missing while the state database says one was made: restore it from the backup (docs/operations.md); the agent does not make a new one, as that would break every configuration already sealed to the old one", path)
	}
	return generate(dir, path)
}

// Read reads the identity file at path, never creating one.
func Read(path string) (*Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("identity %s: not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("identity %s: mode %04o lets others read the key; chmod 600 it", path, fi.Mode().Perm())
	}
	if fi.Size() > maxIdentityFile {
		return nil, fmt.Errorf("identity %s: %d bytes, more than an identity file holds (damaged?)", path, fi.Size())
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("identity %s: %w", path, err)
	}
	keys, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil {
		// The parser's message may quote the line; a key must never reach a log.
		return nil, fmt.Errorf("identity %s is damaged: it does not hold age X25519 keys (restore it from the backup, docs/operations.md)", path)
	}
	x, ok := keys[0].(*age.X25519Identity)
	if !ok {
		return nil, fmt.Errorf("identity %s: the first key is not an X25519 key", path)
	}
	return &Identity{keys: keys, rcpt: x.Recipient().String()}, nil
}

// generate makes a new key at path. The file is written whole under a temporary name and linked
// into place, so a crash leaves no half key, and a key another process made meanwhile is kept.
func generate(dir, path string) (*Identity, error) {
	k, err := age.GenerateX25519Identity()
	if err != nil {
		return nil, fmt.Errorf("identity: generate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: create state folder: %w", err)
	}
	text := fmt.Sprintf("# created: %s\n# public key: %s\n%s\n", time.Now().UTC().Format(time.RFC3339), k.Recipient(), k)
	tmp, err := os.CreateTemp(dir, ".identity-*")
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.WriteString(text)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("identity: write: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return Read(path)
		}
		return nil, fmt.Errorf("identity: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return nil, fmt.Errorf("identity: sync state folder: %w", err)
		}
	}
	return &Identity{keys: []age.Identity{k}, rcpt: k.Recipient().String()}, nil
}
