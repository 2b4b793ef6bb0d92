package store

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// The applied configurations' history of an endpoint (see store.go for the rest of the layout):
//
//	hot/e<ep>y   the newest historyMax entries, oldest first, in one value
//
// It is metadata only (no bodies), written by the result's own commit, and bounded: an entry takes
// at most about historyIDMax+45 bytes, so the record stays within a few KiB, whatever the ids.
const (
	historyMax   = 32  // entries kept per endpoint
	historyIDMax = 100 // bytes of an id kept; a longer one is cut and ends with "…"
)

// Origin is how a configuration came to the agent.
type Origin uint8

// The origins. The zero value is a push, so that an offer stored before origins were is one.
const (
	OriginPush   Origin = iota // sent by the server unasked
	OriginPull                 // the answer to one of the agent's own requests for the latest
	OriginImport               // applied from a file through `cmx-agent import`
)

var originNames = [...]string{"push", "pull", "import"}

func (o Origin) String() string {
	if int(o) < len(originNames) {
		return originNames[o]
	}
	return fmt.Sprintf("origin(%d)", uint8(o))
}

// MarshalText writes the origin's name, as the local API shows it.
func (o Origin) MarshalText() ([]byte, error) {
	if int(o) >= len(originNames) {
		return nil, fmt.Errorf("unknown origin %d", uint8(o))
	}
	return []byte(originNames[o]), nil
}

// UnmarshalText reads an origin's name.
func (o *Origin) UnmarshalText(b []byte) error {
	for i, n := range originNames {
		if string(b) == n {
			*o = Origin(i)
			return nil
		}
	}
	return fmt.Errorf("unknown origin %q (want push, pull or import)", b)
}

// HistoryEntry is one applied configuration in an endpoint's history.
type HistoryEntry struct {
	At     time.Time `json:"at"`           // when its result was committed (millisecond precision)
	ID     string    `json:"id,omitempty"` // as people read it; "" = applied without an id
	SHA256 string    `json:"sha256"`       // hex sha256 of the output as applied (status's applied_hash)
	Origin Origin    `json:"origin"`
	// Version is the signed configuration's version (0: unsigned).
	Version int64 `json:"version,omitempty"`
}

// historyVersion is the record's format: 2 adds each entry's signed version; 1, written before
// signed configurations, is still read.
const historyVersion = 2

var errHistory = errors.New("history: bad record")

// encodeHistory writes entries, oldest first: format (2), then per entry varint unix milliseconds,
// origin (1), hash length (1) and the hash's bytes, uvarint id length and the id, varint signed
// version.
func encodeHistory(ents []HistoryEntry) []byte {
	b := []byte{historyVersion}
	for _, h := range ents {
		b = binary.AppendVarint(b, h.At.UnixMilli())
		b = append(b, byte(h.Origin))
		sum, err := hex.DecodeString(h.SHA256)
		if err != nil || len(sum) > 255 {
			sum = nil // not from this agent's hashing; the entry is kept without it
		}
		b = append(b, byte(len(sum)))
		b = append(b, sum...)
		b = binary.AppendUvarint(b, uint64(len(h.ID)))
		b = append(b, h.ID...)
		b = binary.AppendVarint(b, h.Version)
	}
	return b
}

func decodeHistory(raw []byte) ([]HistoryEntry, error) {
	if raw == nil {
		return nil, nil
	}
	if len(raw) == 0 || raw[0] < 1 || raw[0] > historyVersion {
		return nil, errHistory
	}
	format := raw[0]
	r := raw[1:]
	var out []HistoryEntry
	for len(r) > 0 {
		ms, n := binary.Varint(r)
		if n <= 0 || len(r) < n+2 {
			return nil, errHistory
		}
		r = r[n:]
		h := HistoryEntry{At: time.UnixMilli(ms).UTC(), Origin: Origin(r[0])}
		sumLen := int(r[1])
		r = r[2:]
		if len(r) < sumLen {
			return nil, errHistory
		}
		if sumLen > 0 {
			h.SHA256 = hex.EncodeToString(r[:sumLen])
		}
		r = r[sumLen:]
		idLen, m := binary.Uvarint(r)
		if m <= 0 || idLen > uint64(len(r)-m) {
			return nil, errHistory
		}
		h.ID = string(r[m : m+int(idLen)])
		r = r[m+int(idLen):]
		if format >= 2 {
			v, n := binary.Varint(r)
			if n <= 0 {
				return nil, errHistory
			}
			h.Version, r = v, r[n:]
		}
		out = append(out, h)
	}
	return out, nil
}

// History returns an endpoint's applied configurations, newest first; none when nothing was
// applied since the history began. A record that does not decode is an error.
func (t *Tx) History(ep string) ([]HistoryEntry, error) {
	ents, err := decodeHistory(t.hot().Get(epKey(ep, kindHistory)))
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", ep, err)
	}
	for i, j := 0, len(ents)-1; i < j; i, j = i+1, j-1 {
		ents[i], ents[j] = ents[j], ents[i]
	}
	return ents, nil
}

// AddHistory records h as the endpoint's newest applied configuration, forgetting the oldest past
// historyMax. The newest entry applied again (the same id and hash: a 7/CMP server repeating it,
// the answer that heals a damaged state record) is no new entry. A record that does not decode is started afresh rather than failing the commit it
// rides on: the history is for people, the result it goes with is not.
func (t *Tx) AddHistory(ep string, h HistoryEntry) error {
	key := epKey(ep, kindHistory)
	ents, err := decodeHistory(t.hot().Get(key))
	if err != nil {
		ents = nil
	}
	h.ID = cutID(h.ID)
	if n := len(ents); n > 0 && ents[n-1].ID == h.ID && ents[n-1].SHA256 == h.SHA256 {
		return nil
	}
	ents = append(ents, h)
	if len(ents) > historyMax {
		ents = ents[len(ents)-historyMax:]
	}
	if err := t.hot().Put(key, encodeHistory(ents)); err != nil {
		return fmt.Errorf("endpoint %s history: %w", ep, err)
	}
	return nil
}

// cutID keeps at most historyIDMax bytes of id, cut on a character boundary and marked with "…".
func cutID(id string) string {
	if len(id) <= historyIDMax {
		return id
	}
	const mark = "…"
	n := historyIDMax - len(mark)
	for n > 0 && !utf8.RuneStart(id[n]) {
		n--
	}
	return id[:n] + mark
}
