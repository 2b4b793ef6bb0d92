package cmx

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// The fuzz limits are small so that random inputs reach every limit; the seed corpus in
// testdata/fuzz/FuzzParsePush is written against them (oversized = 4097 bytes, too deep = 17 levels,
// id too long = 33 bytes, too many entries = 17).
const (
	fuzzMaxPayload = 4096
	fuzzMaxDepth   = 16
	fuzzMaxIDLen   = 32
	fuzzMaxEntries = 16
)

func FuzzParsePush(f *testing.F) {
	f.Fuzz(func(t *testing.T, payload []byte) {
		in := bytes.Clone(payload)
		p, err := ParsePush(payload, Limits{MaxPayload: fuzzMaxPayload, MaxDepth: fuzzMaxDepth, MaxIDLen: fuzzMaxIDLen, MaxEntries: fuzzMaxEntries})
		if !bytes.Equal(payload, in) {
			t.Fatalf("ParsePush modified its input")
		}
		if err != nil {
			var ie *InputError
			if !errors.As(err, &ie) {
				t.Fatalf("error %T %v, want *InputError", err, err)
			}
			if !strings.HasPrefix(ie.Status(), "invalid payload: ") {
				t.Fatalf("Status() = %q, want the prefix \"invalid payload: \"", ie.Status())
			}
			if !ie.ID.IsZero() {
				checkIDKey(t, ie.ID)
			}
			return
		}

		if !json.Valid(payload) {
			t.Fatalf("accepted a payload that is not JSON: %q", payload)
		}
		if len(payload) > fuzzMaxPayload {
			t.Fatalf("accepted %d bytes, limit %d", len(payload), fuzzMaxPayload)
		}
		if depth, _ := nestingDepth(payload); depth > fuzzMaxDepth {
			t.Fatalf("accepted nesting %d, limit %d", depth, fuzzMaxDepth)
		}
		if !json.Valid(p.Entries) || len(p.Entries) == 0 || p.Entries[0] != '[' {
			t.Fatalf("Entries %q are not a JSON array", p.Entries)
		}
		if !bytes.Contains(payload, p.Entries) {
			t.Fatalf("Entries %q are not a part of the payload %q", p.Entries, payload)
		}
		// arrayLen is the limit's only check: it must agree with the decoder.
		var elems []json.RawMessage
		if err := json.Unmarshal(p.Entries, &elems); err != nil {
			t.Fatalf("Entries %q do not decode as an array: %v", p.Entries, err)
		}
		if n := arrayLen(p.Entries); n != len(elems) || n > fuzzMaxEntries {
			t.Fatalf("arrayLen(%q) = %d, decoder counts %d, limit %d", p.Entries, n, len(elems), fuzzMaxEntries)
		}
		if p.ID.IsZero() {
			if c := string(Confirmation(p.ID, StatusOK)); c != `{"status":"ok"}` {
				t.Fatalf("confirmation without id = %s", c)
			}
			return
		}
		checkIDKey(t, p.ID)
		// A U+FFFD the server did not send means the decoder replaced something: a lossy key.
		if strings.ContainsRune(p.ID.Key(), utf8.RuneError) &&
			!bytes.Contains(payload, []byte("\uFFFD")) && !bytes.Contains(bytes.ToLower(payload), []byte(`\ufffd`)) {
			t.Fatalf("id key %q has a replacement character that %q does not", p.ID.Key(), payload)
		}
		if len(p.ID.Key()) > fuzzMaxIDLen {
			t.Fatalf("accepted id of %d bytes, limit %d", len(p.ID.Key()), fuzzMaxIDLen)
		}
		conf := Confirmation(p.ID, StatusOK)
		id, status, err := ParseConfirmation(conf)
		if err != nil || id != p.ID || status != StatusOK {
			t.Fatalf("confirmation %s parses back as %q, %q, %v; want %q, ok", conf, id.Key(), status, err, p.ID.Key())
		}
	})
}

// checkIDKey asserts that an id's key is JSON text of a string or a number.
func checkIDKey(t *testing.T, id ID) {
	t.Helper()
	key := []byte(id.Key())
	if !json.Valid(key) {
		t.Fatalf("ID.Key() %q is not JSON", key)
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(key))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("ID.Key() %q: %v", key, err)
	}
	switch v.(type) {
	case string, json.Number:
	default:
		t.Fatalf("ID.Key() %q is a %T, want a string or a number", key, v)
	}
}

func FuzzSplitTopic(f *testing.F) {
	f.Add("kp1/app-v1/cmx/gw-001/json", "app-v1", "cmx", "gw-001", uint64(0))
	f.Add("kp1/app-v1/cmx/gw-001/json/42/status", "app-v1", "cmx", "gw-001", uint64(42))
	f.Add("kp1/app-v1/cmx//json", "app-v1", "cmx", "", uint64(1))
	f.Add("kp1/app-v1/cmx/gw-001", "app-v1", "cmx", "gw/001", uint64(7))
	f.Add("kp1/a/b/c/d/e/f", "a/b", "c", "+", uint64(18446744073709551615))
	f.Add("", "", "", "#", uint64(0))
	f.Fuzz(func(t *testing.T, topic, app, ext, token string, reqID uint64) {
		if tp, ok := SplitTopic(topic, app, ext); ok {
			if tp.Token == "" || strings.Contains(tp.Token, "/") || len(tp.Rest) == 0 {
				t.Fatalf("SplitTopic(%q) = %#v", topic, tp)
			}
			if back := Prefix(app, ext, tp.Token) + "/" + strings.Join(tp.Rest, "/"); back != topic {
				t.Fatalf("SplitTopic(%q) = %#v, which rebuilds as %q", topic, tp, back)
			}
			_ = IsPush(tp.Rest)
		}

		if !ValidLevel(token) {
			return
		}
		prefix := Prefix(app, ext, token)
		checkRoute := func(topic string, wantPush bool) {
			t.Helper()
			tp, ok := SplitTopic(topic, app, ext)
			if !ok || tp.Token != token || IsPush(tp.Rest) != wantPush {
				t.Fatalf("SplitTopic(%q, %q, %q) = %#v, %v (push %v); want token %q, push %v",
					topic, app, ext, tp, ok, IsPush(tp.Rest), token, wantPush)
			}
		}
		checkRoute(prefix+"/json", true)
		if tp, _ := SplitTopic(prefix+"/json", app, ext); !reflect.DeepEqual(tp.Rest, []string{"json"}) {
			t.Fatalf("Rest of %q = %q, want [json]", prefix+"/json", tp.Rest)
		}
		push := PushTopic(prefix, reqID)
		checkRoute(push, true)
		checkRoute(StatusTopic(push), false)
		checkRoute(PullTopic(prefix), false)
	})
}
