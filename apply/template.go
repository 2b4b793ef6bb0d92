package apply

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"
)

// MaxRenderSize bounds a rendered template: a loop in a template must not fill the disk.
const MaxRenderSize = 64 << 20

// Render executes the Go text/template in the file tmplPath with the JSON document body as its data
// and returns the output.
//
// Inside the template "." is body decoded from JSON: objects are map[string]any, arrays []any, and
// numbers json.Number, which prints exactly as the server wrote it (no 1e+06 for 1000000, no lost
// digits). A missing map key is an error rather than "<no value>", so a typo in a template cannot put
// a silently broken file in place; use index or hasKey for optional keys.
//
// The functions are the standard ones plus Funcs; none reads files, the environment or runs
// anything, so a configuration cannot make the template reach outside its data.
func Render(tmplPath string, body []byte) ([]byte, error) {
	src, err := os.ReadFile(tmplPath)
	if err != nil {
		return nil, fmt.Errorf("read template: %w", err)
	}
	t, err := template.New(filepath.Base(tmplPath)).Option("missingkey=error").Funcs(Funcs()).Parse(string(src))
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var data any
	if err := dec.Decode(&data); err != nil {
		return nil, fmt.Errorf("decode body as JSON: %w", err)
	}
	var out bytes.Buffer
	if err := t.Execute(&limitWriter{w: &out, n: MaxRenderSize}, data); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

var errTooLarge = fmt.Errorf("output larger than %d bytes", MaxRenderSize)

type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if len(p) > l.n {
		return 0, errTooLarge
	}
	l.n -= len(p)
	return l.w.Write(p)
}

// Funcs is the function set templates get besides text/template's built-ins (and, or, not, len,
// index, slice, print, printf, println, eq, ne, lt, le, gt, ge, html, js, urlquery, call).
//
//	json v          v as compact JSON
//	jsonIndent v    v as JSON indented by two spaces
//	quote v         v as a double-quoted string with Go escapes (safe in INI, env and YAML values)
//	join sep list   the elements of list printed and joined by sep
//	upper, lower, trim s
//	replace old new s
//	split sep s     s cut at every sep
//	contains sub s, hasPrefix pre s, hasSuffix suf s
//	default d v     v, or d when v is missing, nil, "" or false
//	hasKey map key  whether the object has the key
//	keys map        the object's keys, sorted
//	toString v      v printed as text
//	toInt v         v as an integer (a number or a string of digits); an error otherwise
func Funcs() template.FuncMap {
	return template.FuncMap{
		"json": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
		"jsonIndent": func(v any) (string, error) {
			b, err := json.MarshalIndent(v, "", "  ")
			return string(b), err
		},
		"quote": func(v any) string { return strconv.Quote(toString(v)) },
		"join": func(sep string, list any) (string, error) {
			l, ok := list.([]any)
			if !ok {
				return "", fmt.Errorf("join: want an array, got %T", list)
			}
			parts := make([]string, len(l))
			for i, e := range l {
				parts[i] = toString(e)
			}
			return strings.Join(parts, sep), nil
		},
		"upper":     func(v any) string { return strings.ToUpper(toString(v)) },
		"lower":     func(v any) string { return strings.ToLower(toString(v)) },
		"trim":      func(v any) string { return strings.TrimSpace(toString(v)) },
		"replace":   func(old, new string, v any) string { return strings.ReplaceAll(toString(v), old, new) },
		"split":     func(sep string, v any) []string { return strings.Split(toString(v), sep) },
		"contains":  func(sub string, v any) bool { return strings.Contains(toString(v), sub) },
		"hasPrefix": func(pre string, v any) bool { return strings.HasPrefix(toString(v), pre) },
		"hasSuffix": func(suf string, v any) bool { return strings.HasSuffix(toString(v), suf) },
		"default": func(d any, v ...any) any {
			if len(v) == 0 || v[0] == nil || v[0] == "" || v[0] == false {
				return d
			}
			return v[0]
		},
		"hasKey": func(m any, key string) bool {
			mm, ok := m.(map[string]any)
			if !ok {
				return false
			}
			_, ok = mm[key]
			return ok
		},
		"keys": func(m any) ([]string, error) {
			mm, ok := m.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("keys: want an object, got %T", m)
			}
			out := make([]string, 0, len(mm))
			for k := range mm {
				out = append(out, k)
			}
			slices.Sort(out)
			return out, nil
		},
		"toString": toString,
		"toInt": func(v any) (int64, error) {
			s := toString(v)
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return 0, errors.New("toInt: " + strconv.Quote(s) + " is not an integer")
			}
			return n, nil
		},
	}
}

func toString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	case map[string]any, []any:
		b, _ := json.Marshal(x)
		return string(b)
	}
	return fmt.Sprint(v)
}
