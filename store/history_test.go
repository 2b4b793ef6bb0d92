package store

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The history keeps the newest historyMax applied configurations per endpoint, newest first, each
// endpoint its own (keys that share a prefix included), whatever is added.
func TestHistory_KeepsTheNewestWithinTheBudgetNewestFirst(t *testing.T) {
	st := mustOpen(t, 0)
	t0 := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	entry := func(i int) HistoryEntry {
		return HistoryEntry{At: t0.Add(time.Duration(i) * time.Second), ID: fmt.Sprint("cfg-", i),
			SHA256: fmt.Sprintf("%064x", i), Origin: Origin(i % 3)}
	}
	const n = historyMax*3 + 5
	for i := range n {
		if err := st.Update(func(tx *Tx) error {
			if err := tx.AddHistory("gw", entry(i)); err != nil {
				return err
			}
			return tx.AddHistory("gw/a", entry(1000+i))
		}); err != nil {
			t.Fatal(err)
		}
	}
	st.View(func(tx *Tx) error {
		for key, base := range map[string]int{"gw": 0, "gw/a": 1000} {
			got, err := tx.History(key)
			if err != nil {
				t.Fatalf("%s: %v", key, err)
			}
			if len(got) != historyMax {
				t.Fatalf("%s: %d entries, want the budget of %d", key, len(got), historyMax)
			}
			for j, h := range got {
				if want := entry(base + n - 1 - j); h != want {
					t.Errorf("%s entry %d = %+v, want %+v (newest first)", key, j, h, want)
				}
			}
		}
		if got, err := tx.History("gw/b"); err != nil || len(got) != 0 {
			t.Errorf("an endpoint with nothing applied: %+v, %v; want none", got, err)
		}
		return nil
	})
	// The newest applied again is no new entry; an older one again is.
	again := entry(n - 1)
	again.At = again.At.Add(time.Hour)
	older := entry(n - 2)
	for _, h := range []HistoryEntry{again, older} {
		if err := st.Update(func(tx *Tx) error { return tx.AddHistory("gw", h) }); err != nil {
			t.Fatal(err)
		}
	}
	st.View(func(tx *Tx) error {
		got, _ := tx.History("gw")
		if len(got) != historyMax || got[0] != older || got[1] != entry(n-1) || got[2] != entry(n-2) {
			t.Errorf("after the newest again and an older one: %+v…, want %v, %v, %v", got[:3], older, entry(n-1), entry(n-2))
		}
		return nil
	})
	// The record stays within its byte budget, long ids included (cut, marked).
	long := HistoryEntry{At: t0, ID: strings.Repeat("x", 10000), SHA256: fmt.Sprintf("%064x", 1), Origin: OriginPull}
	for range historyMax {
		if err := st.Update(func(tx *Tx) error { return tx.AddHistory("gw", long) }); err != nil {
			t.Fatal(err)
		}
	}
	st.View(func(tx *Tx) error {
		raw := tx.hot().Get(epKey("gw", kindHistory))
		if max := historyMax * (historyIDMax + 64); len(raw) > max {
			t.Errorf("history record of %d bytes, want at most %d", len(raw), max)
		}
		got, _ := tx.History("gw")
		if id := got[0].ID; len(id) > historyIDMax || !strings.HasSuffix(id, "…") {
			t.Errorf("a long id is kept as %d bytes %q…, want at most %d, ending with …", len(id), id[:10], historyIDMax)
		}
		return nil
	})
}

// A history record that does not decode is reported by History, and the next entry starts it
// afresh: it never stops a result from being committed.
func TestHistory_ADamagedRecordIsReportedAndReplacedByTheNextEntry(t *testing.T) {
	st := mustOpen(t, 0)
	if err := st.Update(func(tx *Tx) error { return tx.hot().Put(epKey("gw", kindHistory), []byte{9, 9, 9}) }); err != nil {
		t.Fatal(err)
	}
	st.View(func(tx *Tx) error {
		if _, err := tx.History("gw"); err == nil {
			t.Error("a damaged record read without error")
		}
		return nil
	})
	e := HistoryEntry{At: time.Unix(1800000000, 0).UTC(), ID: "7", SHA256: fmt.Sprintf("%064x", 7), Origin: OriginImport}
	if err := st.Update(func(tx *Tx) error { return tx.AddHistory("gw", e) }); err != nil {
		t.Fatalf("adding to a damaged record: %v", err)
	}
	st.View(func(tx *Tx) error {
		if got, err := tx.History("gw"); err != nil || len(got) != 1 || got[0] != e {
			t.Errorf("history = %+v, %v; want only %+v", got, err, e)
		}
		return nil
	})
}

func TestOrigin_TextRoundTripsAndRefusesUnknownNames(t *testing.T) {
	for _, o := range []Origin{OriginPush, OriginPull, OriginImport} {
		b, err := o.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Origin
		if err := back.UnmarshalText(b); err != nil || back != o {
			t.Errorf("%s: back as %v, %v", b, back, err)
		}
	}
	if got := []string{OriginPush.String(), OriginPull.String(), OriginImport.String()}; strings.Join(got, " ") != "push pull import" {
		t.Errorf("names %q", got)
	}
	var o Origin
	if err := o.UnmarshalText([]byte("carrier pigeon")); err == nil {
		t.Error("an unknown origin was accepted")
	}
}

// A signed configuration's version is kept with its entry; a record of the first format, written
// before versions were, still reads.
func TestHistory_KeepsTheSignedVersionAndReadsTheFirstFormat(t *testing.T) {
	at := time.UnixMilli(1800000000123).UTC()
	ents := []HistoryEntry{{At: at, ID: "a", SHA256: fmt.Sprintf("%064x", 1), Origin: OriginImport, Version: 1765432100}, {At: at, ID: "b", SHA256: fmt.Sprintf("%064x", 2)}}
	got, err := decodeHistory(encodeHistory(ents))
	if err != nil || len(got) != 2 || got[0] != ents[0] || got[1] != ents[1] {
		t.Errorf("decode(encode(%+v)) = %+v, %v", ents, got, err)
	}
	// Format 1: no version after the id.
	v1 := []byte{1}
	v1 = binary.AppendVarint(v1, at.UnixMilli())
	v1 = append(v1, byte(OriginPush), 0)
	v1 = binary.AppendUvarint(v1, 1)
	v1 = append(v1, 'x')
	got, err = decodeHistory(v1)
	if err != nil || len(got) != 1 || got[0].ID != "x" || got[0].Version != 0 {
		t.Errorf("first format: %+v, %v; want x without a version", got, err)
	}
}
