package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// DefaultMaxSize bounds an envelope when the verifier is given no limit.
const DefaultMaxSize = 1 << 20

// maxSignatures bounds the general serialization's signatures array: each costs a verification.
const maxSignatures = 8

// Config is a verified signed configuration: the payload's fields, and the signer's key id.
type Config struct {
	Token   string
	Name    string
	Version int64
	Expires int64           // Unix seconds; 0 = never
	ID      json.RawMessage // string or number; nil when absent
	Body    json.RawMessage // the payload's config: what the output gets
	KID     string          // thumbprint of the trusted key that signed it
}

// Label is TOKEN or TOKEN/NAME, as import prints it.
func (c *Config) Label() string {
	if c.Name == "" {
		return c.Token
	}
	return c.Token + "/" + c.Name
}

// CheckBinding refuses a configuration signed for another endpoint than (token, name).
func (c *Config) CheckBinding(token, name string) error {
	if c.Token != token {
		return refuse(ReasonBinding, "for another token (%q, this endpoint is %q)", c.Token, token)
	}
	if c.Name != name {
		return refuse(ReasonBinding, "for another name (%q, this endpoint's is %q)", c.Name, name)
	}
	return nil
}

// Verifier checks envelopes against a fixed set of trusted keys. It is immutable: a reload builds
// a new one.
type Verifier struct {
	keys    []Key
	maxSize int
}

// NewVerifier trusts keys and refuses envelopes over maxSize bytes (DefaultMaxSize when ≤ 0).
func NewVerifier(keys []Key, maxSize int) *Verifier {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	return &Verifier{keys: append([]Key(nil), keys...), maxSize: maxSize}
}

// Keys returns how many keys the verifier trusts.
func (v *Verifier) Keys() int { return len(v.keys) }

// IsEnvelope reports whether a JSON value is meant as a JWS: an object whose "payload" is a
// string, with a string "signature" (flattened) or an array "signatures" (general). Such a value
// is verified, and refused when malformed, rather than written unverified; a configuration that
// merely has members of those names (a "payload" object, say) is not taken for one.
func IsEnvelope(data []byte) bool {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return false
	}
	m := map[string]json.RawMessage{}
	if json.Unmarshal(data, &m) != nil {
		return false
	}
	kind := func(name string) byte {
		if v := bytes.TrimSpace(m[name]); len(v) > 0 {
			return v[0]
		}
		return 0
	}
	return kind("payload") == '"' && (kind("signature") == '"' || kind("signatures") == '[')
}

type signature struct {
	protected string // as encoded: part of the signing input
	header    map[string]json.RawMessage
	sig       string
}

// Verify parses envelope (flattened or general JSON serialization), checks that a trusted key
// signed it with EdDSA, that it has not expired at now, and decodes its payload. Binding and
// anti-rollback are the caller's: see CheckBinding and CheckVersion.
func (v *Verifier) Verify(envelope []byte, now time.Time) (*Config, error) {
	if len(envelope) > v.maxSize {
		return nil, refuse(ReasonTooLarge, "envelope of %d bytes over the limit of %d", len(envelope), v.maxSize)
	}
	payload, sigs, err := parseEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	if len(v.keys) == 0 {
		return nil, refuse(ReasonUntrusted, "not signed by a trusted key (no [trust] keys configured)")
	}
	var kids []string
	var signer *Key
	for _, s := range sigs {
		kid, err := checkHeader(s.header)
		if err != nil {
			return nil, err
		}
		if kid != "" {
			kids = append(kids, kid)
		}
		if k := v.verifyOne(s, payload, kid); k != nil {
			signer = k
			break
		}
	}
	if signer == nil {
		if len(kids) > 0 {
			return nil, refuse(ReasonUntrusted, "not signed by a trusted key (kid %s)", strings.Join(kids, ", "))
		}
		return nil, refuse(ReasonUntrusted, "not signed by a trusted key")
	}
	c, err := decodePayload(payload)
	if err != nil {
		return nil, err
	}
	c.KID = signer.KID
	if c.Expires != 0 && now.Unix() >= c.Expires {
		return nil, refuse(ReasonExpired, "expired (at %s, version %d)", time.Unix(c.Expires, 0).UTC().Format(time.RFC3339), c.Version)
	}
	return c, nil
}

// verifyOne returns the trusted key that made s, or nil. A kid narrows the search to its key.
func (v *Verifier) verifyOne(s signature, payload, kid string) *Key {
	sig, err := base64.RawURLEncoding.Strict().DecodeString(s.sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil
	}
	input := []byte(s.protected + "." + payload)
	for i := range v.keys {
		k := &v.keys[i]
		if kid != "" && k.KID != kid {
			continue
		}
		if ed25519.Verify(k.Public, input, sig) {
			return k
		}
	}
	return nil
}

// parseEnvelope returns the encoded payload and the signatures, with each one's protected and
// unprotected headers merged (they must not share a name, RFC 7515 section 7.2.1).
func parseEnvelope(envelope []byte) (string, []signature, error) {
	top, err := members(envelope)
	if err != nil {
		return "", nil, refuse(ReasonMalformed, "malformed envelope: %v", err)
	}
	var payload string
	if err := stringMember(top, "payload", &payload, envelopeField); err != nil {
		return "", nil, err
	}
	objs, err := signatureObjects(top)
	if err != nil {
		return "", nil, err
	}
	for name := range top {
		switch name {
		case "payload", "signatures", "protected", "header", "signature":
		default:
			return "", nil, refuse(ReasonMalformed, "malformed envelope: unknown member %q", name)
		}
	}
	sigs := make([]signature, 0, len(objs))
	for _, obj := range objs {
		sig, err := parseSignature(obj)
		if err != nil {
			return "", nil, err
		}
		sigs = append(sigs, sig)
	}
	return payload, sigs, nil
}

// signatureObjects returns the envelope's signature objects: those of "signatures" in the general
// serialization (RFC 7515 section 7.2.1), or the envelope itself in the flattened one (7.2.2).
func signatureObjects(top map[string]json.RawMessage) ([]map[string]json.RawMessage, error) {
	list, ok := top["signatures"]
	if !ok {
		return []map[string]json.RawMessage{top}, nil
	}
	for _, k := range []string{"protected", "header", "signature"} {
		if _, ok := top[k]; ok {
			return nil, refuse(ReasonMalformed, "malformed envelope: %q beside \"signatures\"", k)
		}
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(list, &raws); err != nil || len(raws) == 0 {
		return nil, refuse(ReasonMalformed, "malformed envelope: \"signatures\" is not a non-empty array")
	}
	if len(raws) > maxSignatures {
		return nil, refuse(ReasonMalformed, "malformed envelope: %d signatures, at most %d", len(raws), maxSignatures)
	}
	objs := make([]map[string]json.RawMessage, 0, len(raws))
	for _, raw := range raws {
		obj, err := members(raw)
		if err != nil {
			return nil, refuse(ReasonMalformed, "malformed envelope: a signature: %v", err)
		}
		for name := range obj {
			if name != "protected" && name != "header" && name != "signature" {
				return nil, refuse(ReasonMalformed, "malformed envelope: unknown member %q in a signature", name)
			}
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// parseSignature reads one signature object: its protected header, decoded and merged with the
// unprotected one, and the signature.
func parseSignature(obj map[string]json.RawMessage) (signature, error) {
	var protected, sig string
	if err := stringMember(obj, "protected", &protected, envelopeField); err != nil {
		return signature{}, err
	}
	if err := stringMember(obj, "signature", &sig, envelopeField); err != nil {
		return signature{}, err
	}
	header, err := decodeSegment("protected header", protected)
	if err != nil {
		return signature{}, err
	}
	if raw, ok := obj["header"]; ok {
		if err := mergeUnprotected(header, raw); err != nil {
			return signature{}, err
		}
	}
	return signature{protected: protected, header: header, sig: sig}, nil
}

// mergeUnprotected adds the unprotected header raw to header, refusing a name in both and the
// names that only the protected header binds to the signature (alg, crit).
func mergeUnprotected(header map[string]json.RawMessage, raw json.RawMessage) error {
	unprotected, err := members(raw)
	if err != nil {
		return refuse(ReasonMalformed, "malformed envelope: \"header\": %v", err)
	}
	for name, value := range unprotected {
		if _, dup := header[name]; dup {
			return refuse(ReasonMalformed, "malformed envelope: header %q both protected and unprotected", name)
		}
		if name == "alg" || name == "crit" {
			return refuse(ReasonMalformed, "malformed envelope: %q in the unprotected header", name)
		}
		header[name] = value
	}
	return nil
}

// checkHeader accepts alg EdDSA only and no crit, and returns the kid ("" when absent).
func checkHeader(h map[string]json.RawMessage) (string, error) {
	var alg string
	if err := stringMember(h, "alg", &alg, headerField); err != nil {
		return "", err
	}
	if alg != "EdDSA" {
		return "", refuse(ReasonAlgorithm, "algorithm %q not accepted (want EdDSA)", alg)
	}
	if raw, ok := h["crit"]; ok {
		var crit []string
		if err := json.Unmarshal(raw, &crit); err != nil || len(crit) == 0 {
			return "", refuse(ReasonMalformed, "malformed envelope: \"crit\" is not a non-empty array of strings")
		}
		// This verifier understands no extension (b64 included): every critical one is unknown.
		return "", refuse(ReasonCritical, "unknown critical header %q", crit[0])
	}
	var kid string
	if _, ok := h["kid"]; ok {
		if err := stringMember(h, "kid", &kid, headerField); err != nil {
			return "", err
		}
	}
	return kid, nil
}

// decodeSegment decodes a base64url segment holding a JSON object.
func decodeSegment(what, segment string) (map[string]json.RawMessage, error) {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(segment)
	if err != nil {
		return nil, refuse(ReasonMalformed, "malformed envelope: %s is not base64url: %v", what, err)
	}
	m, err := members(raw)
	if err != nil {
		reason := ReasonMalformed
		if what == "payload" {
			reason = ReasonPayload
		}
		return nil, refuse(reason, "%s is not a JSON object: %v", what, err)
	}
	return m, nil
}

func decodePayload(segment string) (*Config, error) {
	m, err := decodeSegment("payload", segment)
	if err != nil {
		return nil, err
	}
	c := &Config{}
	if err := stringMember(m, "token", &c.Token, payloadField); err != nil {
		return nil, err
	}
	if c.Token == "" {
		return nil, refuse(ReasonPayload, "payload: \"token\" is empty")
	}
	if _, ok := m["name"]; ok {
		if err := stringMember(m, "name", &c.Name, payloadField); err != nil {
			return nil, err
		}
	}
	if c.Version, err = intMember(m, "version", true); err != nil {
		return nil, err
	}
	if c.Version < 1 {
		return nil, refuse(ReasonPayload, "payload: \"version\" %d, want an integer ≥ 1", c.Version)
	}
	if c.Expires, err = intMember(m, "expires", false); err != nil {
		return nil, err
	}
	if _, ok := m["expires"]; ok && c.Expires < 1 {
		return nil, refuse(ReasonPayload, "payload: \"expires\" %d, want Unix seconds ≥ 1", c.Expires)
	}
	if id, ok := m["id"]; ok {
		if len(id) == 0 || (id[0] != '"' && id[0] != '-' && (id[0] < '0' || id[0] > '9')) {
			return nil, refuse(ReasonPayload, "payload: \"id\" is neither a string nor a number")
		}
		c.ID = id
	}
	body, ok := m["config"]
	if !ok || string(body) == "null" {
		return nil, refuse(ReasonPayload, "payload: \"config\" missing")
	}
	c.Body = body
	return c, nil
}

// members decodes a JSON object into its members, refusing duplicate names (two parsers could
// otherwise read different values from the same signed bytes) and trailing data.
func members(data []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not an object")
	}
	m := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("not JSON: %w", err)
		}
		name, _ := tok.(string)
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("member %q twice", name)
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, fmt.Errorf("not JSON: %w", err)
		}
		m[name] = value
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the object")
	}
	return m, nil
}

// field says where a member sits, for the refusal's reason and wording.
type field int

const (
	envelopeField field = iota
	headerField
	payloadField
)

func (f field) reason() Reason {
	if f == payloadField {
		return ReasonPayload
	}
	return ReasonMalformed
}

func (f field) String() string {
	return [...]string{"malformed envelope", "malformed header", "payload"}[f]
}

func stringMember(m map[string]json.RawMessage, name string, into *string, f field) error {
	raw, ok := m[name]
	if !ok {
		return refuse(f.reason(), "%s: %q missing", f, name)
	}
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, into) != nil {
		return refuse(f.reason(), "%s: %q is not a string", f, name)
	}
	return nil
}

// intMember reads an integer written as JSON digits (no fraction, no exponent).
func intMember(m map[string]json.RawMessage, name string, required bool) (int64, error) {
	raw, ok := m[name]
	if !ok {
		if required {
			return 0, refuse(ReasonPayload, "payload: %q missing", name)
		}
		return 0, nil
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return 0, refuse(ReasonPayload, "payload: %q is not an integer", name)
	}
	return n, nil
}
