package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
)

// Payload is what a signer puts in a signed configuration.
type Payload struct {
	Token   string          `json:"token"`
	Name    string          `json:"name,omitempty"`
	Version int64           `json:"version"`
	Expires int64           `json:"expires,omitempty"`
	ID      json.RawMessage `json:"id,omitempty"`
	Config  json.RawMessage `json:"config"`
}

// Sign returns p signed with priv as a JWS in the flattened JSON serialization, with alg EdDSA,
// the key's thumbprint as kid and typ cmx-config+json.
func Sign(priv ed25519.PrivateKey, p Payload) ([]byte, error) {
	if p.Token == "" || p.Version < 1 || len(p.Config) == 0 {
		return nil, errors.New("sign: want a token, a version ≥ 1 and a config")
	}
	if !json.Valid(p.Config) || (p.ID != nil && !json.Valid(p.ID)) {
		return nil, errors.New("sign: config or id is not JSON")
	}
	header, err := json.Marshal(map[string]string{
		"alg": "EdDSA",
		"kid": Thumbprint(priv.Public().(ed25519.PublicKey)),
		"typ": "cmx-config+json",
	})
	if err != nil {
		return nil, fmt.Errorf("sign: header: %w", err)
	}
	// HTML escaping would rewrite <, > and & in the config as \u003c...: the same JSON, but
	// not the bytes the signer gave, which the output file gets.
	var buf bytes.Buffer
	enc0 := json.NewEncoder(&buf)
	enc0.SetEscapeHTML(false)
	if err := enc0.Encode(p); err != nil {
		return nil, fmt.Errorf("sign: payload: %w", err)
	}
	body := bytes.TrimRight(buf.Bytes(), "\n")
	enc := base64.RawURLEncoding
	protected, payload := enc.EncodeToString(header), enc.EncodeToString(body)
	sig := ed25519.Sign(priv, []byte(protected+"."+payload))
	out, err := json.Marshal(map[string]string{"protected": protected, "payload": payload, "signature": enc.EncodeToString(sig)})
	if err != nil {
		return nil, fmt.Errorf("sign: envelope: %w", err)
	}
	return out, nil
}
