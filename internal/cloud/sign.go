package cloud

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/trust"
)

// LoadSigningKey reads an Ed25519 private key (PEM PKCS#8, as `cmxctl keygen` and `openssl
// genpkey -algorithm ed25519` write it).
func LoadSigningKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	k, err := trust.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	return k, nil
}

// SignBody signs a configuration body for tg and returns the body that carries it in dialect: in
// cmx3 the entries array holding the envelope alone, in cmp7 the envelope as the config value.
func SignBody(key ed25519.PrivateKey, dialect string, tg Target, body []byte, version int64) ([]byte, error) {
	if !json.Valid(body) {
		return nil, errors.New("sign: the configuration is not JSON")
	}
	if dialect != config.DialectCMP7 && !bytes.HasPrefix(bytes.TrimSpace(body), []byte("[")) {
		// Checked here, where the entries are still in sight: signed, they are one string.
		return nil, errors.New("sign: a cmx3 configuration is the entries array, and this is not an array")
	}
	env, err := trust.Sign(key, trust.Payload{Token: tg.Token, Name: tg.Name, Version: version, Config: body})
	if err != nil {
		return nil, err
	}
	if dialect == config.DialectCMP7 {
		return env, nil
	}
	return append(append([]byte("["), env...), ']'), nil
}

// versions hands out signature versions for serve: the file's modification time in Unix seconds,
// raised past the last one given for the same target when its body differs (two edits within a
// second would otherwise be the same version with another config, which an agent refuses).
type versions struct {
	mu   sync.Mutex
	last map[Target]signedAt
}

type signedAt struct {
	version int64
	body    string
}

func (vs *versions) next(tg Target, mod int64, body []byte) int64 {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if vs.last == nil {
		vs.last = map[Target]signedAt{}
	}
	prev, ok := vs.last[tg]
	v := mod
	switch {
	case ok && prev.body == string(body) && prev.version >= v:
		v = prev.version
	case ok && prev.version >= v:
		v = prev.version + 1
	}
	vs.last[tg] = signedAt{v, string(body)}
	return v
}
