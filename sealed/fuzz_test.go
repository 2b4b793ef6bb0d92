package sealed

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzOpen: whatever the body, Open never panics; what it returns for a body it accepts is JSON,
// and a refusal never quotes the secret sealed in the seed.
func FuzzOpen(f *testing.F) {
	id := newIdentity(f)
	good := seal(f, id.Recipient(), `"`+secret+`"`)
	for _, s := range []string{
		`{"wifi":{"password":` + good + `}}`,
		`[` + good + `,` + good + `]`,
		`{"$sealed":"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----\n"}`,
		`{"a":{"$sealed":1}}`, `{"a":{"b":1,"$sealed":"x"}}`, `[[[[{}]]]]`, `"x"`, `1e400`, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		out, n, err := id.Open(body)
		if err != nil {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the refusal quotes the secret: %v", err)
			}
			return
		}
		if n > 0 && !json.Valid(out) {
			t.Fatalf("Open(%q) = %q, not JSON", body, out)
		}
	})
}
