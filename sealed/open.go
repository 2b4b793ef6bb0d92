package sealed

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"filippo.io/age"
	"filippo.io/age/armor"
)

// Key is the single key of an object that stands for a sealed value.
const Key = "$sealed"

// Bounds of the work one configuration body may ask for: an armored value is a few hundred bytes
// for a password, a few KiB for a certificate's key.
const (
	MaxArmor  = 64 << 10 // bytes of one value's armor
	MaxValues = 64       // sealed values in one body
)

const armorHeader = "-----BEGIN AGE ENCRYPTED FILE-----"

// Error is a sealed value refused: where it is in the body (a JSON path, `$.wifi.password`), why,
// and the kind of refusal, for counting. It never holds the value's content.
type Error struct {
	Path   string
	Reason string
	Kind   Kind
}

// Kind names what is wrong with a configuration's sealed values.
type Kind string

// The kinds of refusal, the label values of the agent's sealed refusals metric.
const (
	KindRecipient Kind = "recipient" // sealed to another recipient: no key of this gateway opens it
	KindDamaged   Kind = "damaged"   // the armor or the age file is damaged
	KindPlaintext Kind = "plaintext" // it opens, but to something that is not JSON, or holds a sealed value itself
	KindMalformed Kind = "malformed" // a "$sealed" object that is not one armored age file, too large, or too many
	KindBody      Kind = "body"      // the body around the sealed values is not one JSON value
	KindMode      Kind = "mode"      // the output would let others read the decrypted values (the agent checks it)
)

// Kinds lists every Kind, in a fixed order.
var Kinds = []Kind{KindRecipient, KindDamaged, KindPlaintext, KindMalformed, KindBody, KindMode}

func (e *Error) Error() string {
	if e.Path == "" {
		return "sealed values: " + e.Reason
	}
	return "sealed value at " + e.Path + ": " + e.Reason
}

// Count returns how many sealed values body holds, without decrypting any; an error for a body
// that is not JSON or holds a malformed sealed value (a "$sealed" beside other keys, not a string,
// not armored, too large, too many).
func Count(body []byte) (int, error) {
	if !mayHoldKey(body) {
		return 0, nil
	}
	_, n, err := rewrite(body, nil)
	return n, err
}

// mayHoldKey reports whether a member named "$sealed" could be in body: spelt out, or with \u
// escapes (no other escape stands for its letters). Every configuration passes here, and most hold
// neither: they cost one scan, not a walk over their tokens (a 1 MiB body took ~300 ms walked).
func mayHoldKey(body []byte) bool {
	return bytes.Contains(body, []byte(Key)) || bytes.Contains(body, []byte(`\u`))
}

// Open returns body with each sealed value replaced by the JSON value it decrypts to, and how many
// there were. A body without any is returned as it is. The result holds secrets: it is for the
// output only, never for the database, a log or an answer.
func (id *Identity) Open(body []byte) ([]byte, int, error) {
	// Checked whole first, so that a body with too many values or a malformed one costs no
	// decryption at all.
	n, err := Count(body)
	if err != nil {
		return nil, n, err
	}
	out, err := id.OpenCounted(body, n)
	return out, n, err
}

// OpenCounted is Open for a body Count has accepted with n sealed values: a caller that has
// counted them already (to refuse a malformed body before anything else) does not walk the body
// again to check it, and a body without any is not walked at all.
func (id *Identity) OpenCounted(body []byte, n int) ([]byte, error) {
	if n == 0 {
		return body, nil
	}
	out, _, err := rewrite(body, id.open)
	return out, err
}

// open decrypts one armored value to compact JSON.
func (id *Identity) open(path, text string) ([]byte, error) {
	r, err := age.Decrypt(armor.NewReader(strings.NewReader(text)), id.keys...)
	var plain []byte
	if err == nil {
		// The plaintext is never larger than the armor; more is a damaged or hostile file.
		plain, err = io.ReadAll(io.LimitReader(r, MaxArmor+1))
	}
	var (
		noMatch *age.NoIdentityMatchError
		armErr  *armor.Error
	)
	switch {
	case errors.As(err, &noMatch):
		return nil, &Error{path, "does not decrypt with this gateway's identity (sealed to another recipient?)", KindRecipient}
	case errors.As(err, &armErr):
		return nil, &Error{path, "damaged armor", KindDamaged}
	case err != nil:
		// age's own message may quote the file; the status says only what went wrong.
		return nil, &Error{path, "damaged: not a valid age file", KindDamaged}
	case len(plain) > MaxArmor:
		return nil, &Error{path, "plaintext larger than its armor (damaged)", KindDamaged}
	case !json.Valid(plain):
		return nil, &Error{path, "the decrypted value is not JSON", KindPlaintext}
	}
	if n, err := Count(plain); err != nil || n > 0 {
		return nil, &Error{path, "the decrypted value holds a sealed value itself (nesting is refused)", KindPlaintext}
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, plain); err != nil {
		return nil, &Error{path, "the decrypted value is not JSON", KindPlaintext}
	}
	return buf.Bytes(), nil
}

// rewrite walks body as a stream of JSON tokens and writes it again, compact, with each sealed
// value replaced by what open returns for it (nil open: only counted and checked). One pass, in
// the body's own key order; the decoder's depth limit bounds the recursion.
func rewrite(body []byte, open func(path, armor string) ([]byte, error)) ([]byte, int, error) {
	w := &walker{dec: json.NewDecoder(bytes.NewReader(body)), open: open}
	w.dec.UseNumber()
	if err := w.value("$"); err != nil {
		return nil, w.n, err
	}
	if _, err := w.dec.Token(); err != io.EOF {
		return nil, w.n, &Error{"", "the body is not one JSON value", KindBody}
	}
	return w.out.Bytes(), w.n, nil
}

type walker struct {
	dec  *json.Decoder
	open func(path, armor string) ([]byte, error)
	out  bytes.Buffer
	n    int
}

var errNotJSON = &Error{"", "the body is not valid JSON", KindBody}

func (w *walker) value(path string) error {
	tok, err := w.dec.Token()
	if err != nil {
		return errNotJSON
	}
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			return w.array(path)
		}
		return w.object(path)
	case json.Number:
		w.out.WriteString(string(t))
	default:
		b, err := marshal(t)
		if err != nil {
			return errNotJSON
		}
		w.out.Write(b)
	}
	return nil
}

func (w *walker) array(path string) error {
	w.out.WriteByte('[')
	for i := 0; w.dec.More(); i++ {
		if i > 0 {
			w.out.WriteByte(',')
		}
		if err := w.value(path + "[" + strconv.Itoa(i) + "]"); err != nil {
			return err
		}
	}
	if _, err := w.dec.Token(); err != nil {
		return errNotJSON
	}
	w.out.WriteByte(']')
	return nil
}

func (w *walker) object(path string) error {
	opened := false
	for i := 0; w.dec.More(); i++ {
		tok, err := w.dec.Token()
		if err != nil {
			return errNotJSON
		}
		key, _ := tok.(string)
		switch {
		case key == Key && i == 0:
			return w.sealed(path)
		case key == Key:
			return &Error{path, `an object with "$sealed" may have no other key`, KindMalformed}
		case opened:
			w.out.WriteByte(',')
		default:
			w.out.WriteByte('{')
			opened = true
		}
		b, _ := marshal(key)
		w.out.Write(b)
		w.out.WriteByte(':')
		if err := w.value(memberPath(path, key)); err != nil {
			return err
		}
	}
	if _, err := w.dec.Token(); err != nil {
		return errNotJSON
	}
	if !opened {
		w.out.WriteByte('{')
	}
	w.out.WriteByte('}')
	return nil
}

// sealed reads the rest of an object whose first key is "$sealed" and writes what it stands for.
func (w *walker) sealed(path string) error {
	tok, err := w.dec.Token()
	if err != nil {
		return errNotJSON
	}
	text, ok := tok.(string)
	if !ok {
		return &Error{path, `"$sealed" must be a string, an ASCII-armored age file`, KindMalformed}
	}
	if w.dec.More() {
		return &Error{path, `an object with "$sealed" may have no other key`, KindMalformed}
	}
	if _, err := w.dec.Token(); err != nil {
		return errNotJSON
	}
	w.n++
	switch {
	case w.n > MaxValues:
		return &Error{"", fmt.Sprintf("more than %d sealed values in one configuration", MaxValues), KindMalformed}
	case len(text) > MaxArmor:
		return &Error{path, fmt.Sprintf("armor of %d bytes, more than %d", len(text), MaxArmor), KindMalformed}
	case !strings.HasPrefix(strings.TrimSpace(text), armorHeader):
		return &Error{path, "not an ASCII-armored age file (" + armorHeader + ")", KindMalformed}
	case w.open == nil:
		w.out.WriteString("null")
		return nil
	}
	plain, err := w.open(path, text)
	if err != nil {
		return err
	}
	w.out.Write(plain)
	return nil
}

// identRE is a member name a path may show after a dot; others are quoted in brackets.
var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

func memberPath(path, key string) string {
	if identRE.MatchString(key) {
		return path + "." + key
	}
	b, _ := marshal(key)
	return path + "[" + string(b) + "]"
}

// marshal is json.Marshal without HTML escaping: the value is written again as it came.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
