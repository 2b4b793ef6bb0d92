package sealed

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"filippo.io/age"
	"filippo.io/age/armor"
)

const secret = "hunter2-s3cret"

// newIdentity is a fresh identity in a temporary state folder.
func newIdentity(t testing.TB) *Identity {
	t.Helper()
	id, err := Load(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// seal encrypts plaintext to rcpt and returns the {"$sealed": ...} object. The plaintext need not
// be JSON: tests seal bad values too.
func seal(t testing.TB, rcpt string, plaintext string) string {
	t.Helper()
	r, err := age.ParseX25519Recipient(rcpt)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	aw := armor.NewWriter(&buf)
	w, err := age.Encrypt(aw, r)
	if err == nil {
		_, err = w.Write([]byte(plaintext))
	}
	if err == nil {
		err = w.Close()
	}
	if err == nil {
		err = aw.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]string{Key: buf.String()})
	return string(b)
}

func TestSeal_MakesAnObjectOpenGivesBack(t *testing.T) {
	id := newIdentity(t)
	obj, err := Seal(id.Recipient(), []byte(` {"user": "u", "password": "`+secret+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(obj), secret) || !strings.HasPrefix(string(obj), `{"$sealed":"-----BEGIN AGE ENCRYPTED FILE-----\n`) {
		t.Fatalf("Seal = %s", obj)
	}
	out, n, err := id.Open([]byte(`{"db":` + string(obj) + `}`))
	if err != nil || n != 1 || string(out) != `{"db":{"user":"u","password":"`+secret+`"}}` {
		t.Fatalf("Open = %s, %d, %v", out, n, err)
	}
	if _, err := Seal(id.Recipient(), []byte("not json")); err == nil {
		t.Fatal("Seal of a value that is not JSON: no error")
	}
	if _, err := Seal("age1nope", []byte("1")); err == nil {
		t.Fatal("Seal to a bad recipient: no error")
	}
}

func TestOpen_ReplacesEachSealedValueByItsJSONInTheBodysOrder(t *testing.T) {
	id := newIdentity(t)
	body := `{"wifi": {"ssid": "home", "password": ` + seal(t, id.Recipient(), `"`+secret+`"`) + `},
	 "db": [1.50, ` + seal(t, id.Recipient(), ` {"user": "u", "password": "p<&>"} `) + `], "a": {}, "b": [], "c": null}`
	out, n, err := id.Open([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"wifi":{"ssid":"home","password":"` + secret + `"},"db":[1.50,{"user":"u","password":"p<&>"}],"a":{},"b":[],"c":null}`
	if string(out) != want || n != 2 {
		t.Fatalf("Open = %s (%d values)\nwant %s (2)", out, n, want)
	}
}

func TestOpen_LeavesABodyWithoutSealedValuesByteForByte(t *testing.T) {
	id := newIdentity(t)
	body := []byte("{\n  \"a\": [1, 2.0e3, \"<x>\"],\n  \"sealed\": {\"x\": 1}\n}\n")
	out, n, err := id.Open(body)
	if err != nil || n != 0 || !bytes.Equal(out, body) {
		t.Fatalf("Open = %q, %d, %v; want the body itself", out, n, err)
	}
}

func TestOpen_RefusesBadSealedValuesNamingThePathNeverTheContent(t *testing.T) {
	id, other := newIdentity(t), newIdentity(t)
	good := seal(t, id.Recipient(), `"`+secret+`"`)
	armored := func(s string) string { var m map[string]string; json.Unmarshal([]byte(s), &m); return m[Key] }
	damaged := strings.Replace(armored(good), "\n", "\n!!", 2)
	many := "[" + strings.Repeat(`{"$sealed": "-----BEGIN AGE ENCRYPTED FILE-----"},`, MaxValues) + good + "]"
	cases := []struct {
		name, body, path, want string
		kind                   Kind
	}{
		{"another gateway's recipient", `{"wifi":{"password":` + seal(t, other.Recipient(), `"`+secret+`"`) + `}}`, "$.wifi.password", "does not decrypt with this gateway's identity", KindRecipient},
		{"damaged armor", `{"wifi":{"password":{"$sealed":` + mustJSON(damaged) + `}}}`, "$.wifi.password", "damaged", KindDamaged},
		{"plaintext not JSON", `{"k":[` + seal(t, id.Recipient(), secret) + `]}`, "$.k[0]", "is not JSON", KindPlaintext},
		{"nested", `{"k":` + seal(t, id.Recipient(), good) + `}`, "$.k", "nesting is refused", KindPlaintext},
		{"too many", many, "", "more than 64 sealed values", KindMalformed},
		{"too large", `{"k":{"$sealed":` + mustJSON("-----BEGIN AGE ENCRYPTED FILE-----"+strings.Repeat("A", MaxArmor)) + `}}`, "$.k", "more than 65536", KindMalformed},
		{"other keys after", `{"k":{"$sealed":"x","y":1}}`, "$.k", "no other key", KindMalformed},
		{"other keys before", `{"k":{"y":1,"$sealed":"x"}}`, "$.k", "no other key", KindMalformed},
		{"not a string", `{"k":{"$sealed":{"a":1}}}`, "$.k", "must be a string", KindMalformed},
		{"not armored", `{"odd key":{"$sealed":"YWdl"}}`, `$["odd key"]`, "not an ASCII-armored age file", KindMalformed},
		{"body not JSON", `{"k":{"$sealed":` + mustJSON(armored(good)) + `}`, "", "not", KindBody},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, _, err := id.Open([]byte(c.body))
			var se *Error
			if !errors.As(err, &se) || se.Path != c.path || !strings.Contains(se.Reason, c.want) || se.Kind != c.kind {
				t.Fatalf("Open: %v (kind %q); want a refusal at %q saying %q, kind %q", err, kindOf(se), c.path, c.want, c.kind)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(string(out), secret) {
				t.Fatalf("the refusal leaks the secret: %v, %q", err, out)
			}
		})
	}
}

func TestCount_ChecksWithoutDecrypting(t *testing.T) {
	id := newIdentity(t)
	body := `[` + seal(t, id.Recipient(), `1`) + `,` + seal(t, newIdentity(t).Recipient(), `2`) + `]`
	if n, err := Count([]byte(body)); n != 2 || err != nil {
		t.Fatalf("Count = %d, %v; want 2 values and no error (the second is another's: not decrypted)", n, err)
	}
	if _, err := Count([]byte(`{"a":{"$sealed":`)); err == nil {
		t.Fatal("Count of a truncated body: no error")
	}
}

func mustJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Every configuration passes Count: one without sealed values (the common case, up to max_payload)
// must cost no walk over its tokens.
func TestCount_ABodyWithoutSealedValuesIsNotWalked(t *testing.T) {
	body := []byte(`[{"pad":"` + strings.Repeat("x", 1<<20) + `","sealed":{"a":[1,2,3]},"s":"$seal"}]`)
	allocs := testing.AllocsPerRun(5, func() {
		if n, err := Count(body); n != 0 || err != nil {
			t.Fatalf("Count = %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("Count of a 1 MiB body without sealed values: %.0f allocations, want 0 (no walk)", allocs)
	}
	// A key spelt with escapes is still found.
	if n, err := Count([]byte(`{"k":{"\u0024sealed":"-----BEGIN AGE ENCRYPTED FILE-----"}}`)); n != 1 || err != nil {
		t.Errorf("Count with an escaped key = %d, %v; want 1", n, err)
	}
}

func kindOf(e *Error) Kind {
	if e == nil {
		return ""
	}
	return e.Kind
}
