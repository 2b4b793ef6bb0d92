package config

import (
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// The toml package knows where every key is but does not say: MetaData keeps
// positions unexported and Undecoded returns bare keys. lineIndex recovers
// them with a small scanner over the (already successfully parsed) document,
// so that every problem, not only syntax errors, can point at its line.

// seg is one step of a key path: a key name, or an index into an array (of
// tables or of values).
type seg struct {
	name  string
	index int
	isIdx bool
}

func keySeg(n string) seg { return seg{name: n} }
func idxSeg(i int) seg    { return seg{index: i, isIdx: true} }

// pathKey encodes a path unambiguously: TOML keys may contain any text, so
// names are quoted.
func pathKey(p []seg) string {
	var b strings.Builder
	for _, s := range p {
		if s.isIdx {
			b.WriteString("[" + strconv.Itoa(s.index) + "]")
			continue
		}
		b.WriteString("." + strconv.Quote(s.name))
	}
	return b.String()
}

// lineIndex maps key paths to the line where they are first defined: a key's
// own line, a table's header, an array element's first line.
type lineIndex map[string]int

// line returns the line of p, or of its closest ancestor that has one, or 0.
func (li lineIndex) line(p ...seg) int {
	for n := len(p); n > 0; n-- {
		if l, ok := li[pathKey(p[:n])]; ok {
			return l
		}
	}
	return 0
}

// scanLines indexes a document that toml has already accepted. On input it
// does not understand it gives up on that part rather than failing: lines are
// a convenience, never a reason to reject a file.
func scanLines(doc string) lineIndex {
	s := &scanner{
		doc:   doc,
		lines: lineIndex{},
		aot:   map[string]int{},
	}
	for i := 0; i < len(doc); i++ {
		if doc[i] == '\n' {
			s.newlines = append(s.newlines, i)
		}
	}
	s.document()
	return s.lines
}

type scanner struct {
	doc      string
	pos      int
	newlines []int // byte offsets of '\n', for offset -> line
	lines    lineIndex
	aot      map[string]int // array-of-tables path -> elements seen so far
}

func (s *scanner) lineAt(off int) int {
	return sort.SearchInts(s.newlines, off) + 1
}

func (s *scanner) record(p []seg, off int) {
	k := pathKey(p)
	if _, ok := s.lines[k]; !ok {
		s.lines[k] = s.lineAt(off)
	}
}

// advance moves forward by n bytes, never past the end, so that slicing the
// document stays in bounds whatever the input.
func (s *scanner) advance(n int) { s.pos = min(s.pos+n, len(s.doc)) }

func (s *scanner) eof() bool { return s.pos >= len(s.doc) }

// rest is the unread input.
func (s *scanner) rest() string {
	if s.eof() {
		return ""
	}
	return s.doc[s.pos:]
}

func (s *scanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.doc[s.pos]
}

// skipBlank skips spaces and tabs, and with newlines also line breaks and
// comments.
func (s *scanner) skipBlank(newlines bool) {
	for !s.eof() {
		switch c := s.doc[s.pos]; {
		case c == ' ' || c == '\t' || c == '\r':
			s.advance(1)
		case newlines && c == '\n':
			s.advance(1)
		case newlines && c == '#':
			s.skipLine()
		default:
			return
		}
	}
}

func (s *scanner) skipLine() {
	if i := strings.IndexByte(s.rest(), '\n'); i >= 0 {
		s.advance(i + 1)
	} else {
		s.pos = len(s.doc)
	}
}

func (s *scanner) document() {
	s.pos = len(s.doc) - len(strings.TrimPrefix(s.doc, "\xef\xbb\xbf"))
	var table []seg
	for {
		s.skipBlank(true)
		if s.eof() {
			return
		}
		start := s.pos
		if s.peek() == '[' {
			table = s.header()
			s.record(table, start)
		} else {
			s.keyValue(table)
		}
		// Whatever follows on the line (a comment) carries no keys.
		s.skipLine()
	}
}

// header reads "[a.b]" or "[[a.b]]" and returns the path it opens.
func (s *scanner) header() []seg {
	start := s.pos
	s.advance(1)
	array := s.peek() == '['
	if array {
		s.advance(1)
	}
	keys := s.key()
	if !array || len(keys) == 0 {
		return s.resolve(keys)
	}
	// The last key names the array itself, not its current element.
	p := append(s.resolve(keys[:len(keys)-1]), keySeg(keys[len(keys)-1]))
	k := pathKey(p)
	// The array gets the line of its first element's header.
	s.record(p, start)
	n := s.aot[k]
	s.aot[k] = n + 1
	p = append(p, idxSeg(n))
	return p
}

// resolve turns the key names of a header into a path, stepping into the
// last element of every array of tables on the way, as TOML does.
func (s *scanner) resolve(keys []string) []seg {
	var p []seg
	for _, k := range keys {
		p = append(p, keySeg(k))
		if n := s.aot[pathKey(p)]; n > 0 {
			p = append(p, idxSeg(n-1))
		}
	}
	return p
}

// key reads a possibly dotted key and stops after it (before '=' or ']').
func (s *scanner) key() []string {
	var keys []string
	for {
		s.skipBlank(false)
		var k string
		switch c := s.peek(); c {
		case '"':
			start := s.pos
			s.basicString()
			k = unquoteKey(s.doc[start:s.pos])
		case '\'':
			start := s.pos
			s.literalString()
			k = strings.Trim(s.doc[start:s.pos], "'")
		default:
			start := s.pos
			for !s.eof() && isBareKeyByte(s.peek()) {
				s.advance(1)
			}
			if s.pos == start {
				return keys
			}
			k = s.doc[start:s.pos]
		}
		keys = append(keys, k)
		s.skipBlank(false)
		if s.peek() != '.' {
			return keys
		}
		s.advance(1)
	}
}

func isBareKeyByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// unquoteKey decodes a quoted key with toml itself, so that escapes mean
// exactly what they meant to the parser.
func unquoteKey(quoted string) string {
	var v struct{ K string }
	if _, err := toml.Decode("K = "+quoted, &v); err != nil {
		return strings.Trim(quoted, `"`)
	}
	return v.K
}

// keyValue reads "key = value" inside table.
func (s *scanner) keyValue(table []seg) {
	start := s.pos
	keys := s.key()
	if len(keys) == 0 || s.peek() != '=' {
		return
	}
	s.advance(1)
	p := append([]seg(nil), table...)
	for _, k := range keys {
		p = append(p, keySeg(k))
		s.record(p, start)
	}
	s.value(p)
}

// value skips one value, indexing the keys of inline tables and the elements
// of arrays on the way.
func (s *scanner) value(p []seg) {
	s.skipBlank(false)
	switch s.peek() {
	case '"':
		s.basicString()
	case '\'':
		s.literalString()
	case '[':
		s.advance(1)
		for i := 0; ; i++ {
			s.skipBlank(true)
			if s.eof() || s.peek() == ']' {
				break
			}
			before := s.pos
			ep := append(append([]seg(nil), p...), idxSeg(i))
			s.record(ep, s.pos)
			s.value(ep)
			s.skipBlank(true)
			if s.peek() == ',' {
				s.advance(1)
			} else if s.pos == before {
				return // not understood; stop here rather than loop
			}
		}
		s.advance(1)
	case '{':
		s.advance(1)
		for {
			s.skipBlank(true)
			if s.eof() || s.peek() == '}' {
				break
			}
			before := s.pos
			s.keyValue(p)
			s.skipBlank(true)
			if s.peek() == ',' {
				s.advance(1)
			} else if s.pos == before {
				return
			}
		}
		s.advance(1)
	default:
		// Numbers, booleans, dates: a date may hold a space, so stop only
		// where a value must end.
		for !s.eof() && !strings.ContainsRune(",]}#\n", rune(s.peek())) {
			s.advance(1)
		}
	}
}

// basicString skips a "..." or """...""" string.
func (s *scanner) basicString() {
	multi := strings.HasPrefix(s.rest(), `"""`)
	if multi {
		s.advance(3)
	} else {
		s.advance(1)
	}
	for !s.eof() {
		switch c := s.doc[s.pos]; {
		case c == '\\':
			s.advance(2)
		case c == '"' && !multi:
			s.advance(1)
			return
		case c == '"' && strings.HasPrefix(s.rest(), `"""`):
			s.advance(3)
			// Up to two quotes may end the content right before the
			// delimiter: the last three of the run close the string.
			for i := 0; i < 2 && s.peek() == '"'; i++ {
				s.advance(1)
			}
			return
		case c == '\n' && !multi:
			return
		default:
			s.advance(1)
		}
	}
}

// literalString skips a '...' or ”'...”' string.
func (s *scanner) literalString() {
	if strings.HasPrefix(s.rest(), "'''") {
		s.advance(3)
		i := strings.Index(s.rest(), "'''")
		if i < 0 {
			s.pos = len(s.doc)
			return
		}
		s.advance(i + 3)
		for i := 0; i < 2 && s.peek() == '\''; i++ {
			s.advance(1)
		}
		return
	}
	s.advance(1)
	switch i := strings.IndexAny(s.rest(), "'\n"); {
	case i < 0:
		s.pos = len(s.doc)
	case s.doc[s.pos+i] == '\n':
		s.advance(i)
	default:
		s.advance(i + 1)
	}
}
