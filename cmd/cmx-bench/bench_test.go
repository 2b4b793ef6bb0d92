package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/cmx"
)

func TestQuantile_IsTheNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for q, want := range map[float64]time.Duration{0.5: 50, 0.99: 99, 1: 100, 0: 1} {
		if got := quantile(d, q); got != want {
			t.Errorf("quantile(1..100, %v) = %v, want %v", q, got, want)
		}
	}
	if got := quantile(nil, 0.5); got != 0 {
		t.Errorf("quantile(nil) = %v, want 0", got)
	}
}

func TestBigPayload_IsAValidPushOfTheRequestedSize(t *testing.T) {
	const n = 1 << 20
	p := bigPayload("big-0", n, 0)
	if len(p) > n || len(p) < n-200 {
		t.Errorf("payload is %d bytes, want just under %d", len(p), n)
	}
	push, err := cmx.ParsePush(p, cmx.DefaultLimits(2*n))
	if err != nil {
		t.Fatalf("not a valid push: %v", err)
	}
	if push.ID.Text() != "big-0" {
		t.Errorf("id %q, want big-0", push.ID.Text())
	}
}

func TestLastConnected_ReadsTheLastConnectLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.log")
	log := `time=2026-11-25T14:35:16.227Z level=INFO msg="connected to broker" server=tcp://127.0.0.1:1
time=2026-11-25T14:35:17.000Z level=WARN msg="connection to broker lost" server=tcp://127.0.0.1:1
time=2026-11-25T14:35:17.731Z level=INFO msg="connected to broker" server=tcp://127.0.0.1:1
time=2026-11-25T14:35:18.000Z level=INFO msg="configuration applied"
`
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got, ok := lastConnected(path)
	want := time.Date(2026, 11, 25, 14, 35, 17, 731e6, time.UTC)
	if !ok || !got.Equal(want) {
		t.Errorf("lastConnected = %v, %v; want %v", got, ok, want)
	}
	if _, ok := lastConnected(filepath.Join(t.TempDir(), "none.log")); ok {
		t.Error("lastConnected of a missing log reports a time")
	}
}
