package trust

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// Key is a trusted signer: an Ed25519 public key and its RFC 7638 JWK thumbprint, the `kid` a
// signature names it by.
type Key struct {
	Public ed25519.PublicKey
	KID    string
	Source string // where it was read from, for messages
}

// Thumbprint returns the RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of an
// Ed25519 public key: the hash of {"crv":"Ed25519","kty":"OKP","x":...}, members in that order.
func Thumbprint(pub ed25519.PublicKey) string {
	jwk := `{"crv":"Ed25519","kty":"OKP","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}`
	sum := sha256.Sum256([]byte(jwk))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// ParsePublicKey reads one Ed25519 public key in PEM "PUBLIC KEY" (PKIX), as `openssl pkey
// -pubout` and `cmxctl keygen` write it. Errors say what the file holds instead, never its bytes.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block (want -----BEGIN PUBLIC KEY-----)")
	}
	switch block.Type {
	case "PUBLIC KEY":
	case "PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "OPENSSH PRIVATE KEY":
		// A private key on a gateway is a leak waiting to happen; name the mistake.
		return nil, fmt.Errorf("holds a %s, not a public key: list the .pub file and keep the private key offline", block.Type)
	default:
		return nil, fmt.Errorf("PEM block %q, want PUBLIC KEY", block.Type)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("more than one PEM block or trailing data after the key (one key per file)")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse PKIX public key: %w", err)
	}
	ed, ok := pub.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("a %T public key, want Ed25519", pub)
	}
	return ed, nil
}

// LoadKey reads a trusted key from a PEM file.
func LoadKey(path string) (Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("read trusted key: %w", err)
	}
	pub, err := ParsePublicKey(data)
	if err != nil {
		return Key{}, fmt.Errorf("trusted key %s: %w", path, err)
	}
	return Key{Public: pub, KID: Thumbprint(pub), Source: path}, nil
}

// LoadKeys reads every file of paths; the first that fails stops it.
func LoadKeys(paths []string) ([]Key, error) {
	keys := make([]Key, 0, len(paths))
	for _, p := range paths {
		k, err := LoadKey(p)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// EncodePublicKey writes pub as PEM "PUBLIC KEY" (PKIX).
func EncodePublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// EncodePrivateKey writes priv as PEM "PRIVATE KEY" (PKCS#8), as `openssl genpkey` does.
func EncodePrivateKey(priv ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey reads an Ed25519 private key in PEM "PRIVATE KEY" (PKCS#8).
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM PRIVATE KEY block (want PKCS#8, as openssl genpkey -algorithm ed25519 writes)")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse PKCS#8 private key: %w", err)
	}
	ed, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("a %T private key, want Ed25519", k)
	}
	return ed, nil
}
