package agent

import (
	"testing"
	"time"
)

func openTestStore(t *testing.T) *Store {
	t.Helper()
	st, err := OpenStore(t.TempDir(), time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestOutbox_NewestReportReplacesUnsentOlderOfSameEndpoint(t *testing.T) {
	st := openTestStore(t)
	msgs := []OutMsg{
		{Endpoint: "gw", Topic: "t/confirm", QoS: 1, Payload: []byte("cmx3 a")},
		{Endpoint: "gw", Topic: "t/applied/1", QoS: 1, Payload: []byte("report 1"), Replaces: "applied gw"},
		{Endpoint: "dev", Topic: "d/applied/2", QoS: 1, Payload: []byte("report dev"), Replaces: "applied dev"},
		{Endpoint: "gw", Topic: "t/confirm", QoS: 1, Payload: []byte("cmx3 b")},
		{Endpoint: "gw", Topic: "t/applied/3", QoS: 1, Payload: []byte("report 3"), Replaces: "applied gw"},
	}
	for _, m := range msgs {
		if err := st.Update(func(tx *Tx) error { _, err := tx.Enqueue(m); return err }); err != nil {
			t.Fatal(err)
		}
	}
	var got []OutMsg
	if err := st.View(func(tx *Tx) error {
		var err error
		got, err = tx.Outbox(0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"cmx3 a", "report dev", "cmx3 b", "report 3"}
	if len(got) != len(want) {
		t.Fatalf("outbox holds %d messages, want %d: %v", len(got), len(want), got)
	}
	for i, m := range got {
		if string(m.Payload) != want[i] {
			t.Errorf("outbox[%d] = %q, want %q", i, m.Payload, want[i])
		}
	}
	if got[3].Replaces != "applied gw" || got[3].Topic != "t/applied/3" || got[3].QoS != 1 {
		t.Errorf("stored report = %+v", got[3])
	}
}

func TestServerState_RoundTripsPerEndpoint(t *testing.T) {
	st := openTestStore(t)
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	want := ServerState{ErrorCode: 404, ErrorReason: "not found", ErrorAt: at, Errors: 2}
	if err := st.Update(func(tx *Tx) error { return tx.SetServerState("gw/modbus", want) }); err != nil {
		t.Fatal(err)
	}
	if err := st.View(func(tx *Tx) error {
		got, err := tx.ServerState("gw/modbus")
		if err != nil {
			return err
		}
		if !got.ErrorAt.Equal(at) || got.ErrorCode != 404 || got.ErrorReason != "not found" || got.Errors != 2 {
			t.Errorf("ServerState = %+v, want %+v", got, want)
		}
		other, err := tx.ServerState("gw")
		if other != (ServerState{}) {
			t.Errorf("another endpoint's ServerState = %+v, want zero", other)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
