package mqtttest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

const wait = 5 * time.Second

func TestStart_ServesOnLoopbackWithTheTestConfig(t *testing.T) {
	b := Start(t)

	if !strings.HasPrefix(b.Addr, "127.0.0.1:") || b.URL != "tcp://"+b.Addr {
		t.Fatalf("Addr = %q, URL = %q; want 127.0.0.1:PORT and tcp://127.0.0.1:PORT", b.Addr, b.URL)
	}
	conn, err := net.DialTimeout("tcp", b.Addr, time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", b.Addr, err)
	}
	conn.Close()

	conf, err := os.ReadFile(filepath.Join(b.Dir, "mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		fmt.Sprintf("listener %d 127.0.0.1", b.Port),
		"allow_anonymous true",
		"set_tcp_nodelay true",
		"persistence true",
		"persistence_location " + b.Dir,
		"user root",
		"log_type all",
		"connection_messages true",
	} {
		if !strings.Contains(string(conf), line+"\n") {
			t.Errorf("config lacks %q:\n%s", line, conf)
		}
	}
	if log := b.Log(); !strings.Contains(log, fmt.Sprintf("Opening ipv4 listen socket on port %d.", b.Port)) {
		t.Errorf("log does not show the listener:\n%s", log)
	}
}

func TestStart_FailsWithInstallHintWhenMosquittoIsMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no fallback through PATH either

	msg := expectFatal(t, func(tb testing.TB) { start(tb, filepath.Join(t.TempDir(), "no-mosquitto"), Options{}) })

	if !strings.Contains(msg, "apt-get install -y mosquitto") {
		t.Fatalf("failure message %q does not say how to install mosquitto", msg)
	}
}

func TestPublishSubscribe_DeliversTopicPayloadAndMinQoS(t *testing.T) {
	b := Start(t)
	pub := b.Client(t)

	tests := []struct {
		name           string
		pubQoS, subQoS byte
		wantQoS        byte
	}{
		{"qos0 publish", 0, 2, 0},
		{"qos1 publish", 1, 2, 1},
		{"qos2 publish", 2, 2, 2},
		{"qos1 publish, qos0 subscription", 1, 0, 0},
		{"qos2 publish, qos1 subscription", 2, 1, 1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			topic := fmt.Sprintf("round/trip/%d", i)
			payload := []byte(fmt.Sprintf(`{"case":%d}`, i))
			sub := b.Client(t).Subscribe(t, topic, tc.subQoS)

			pub.Publish(t, topic, tc.pubQoS, payload)

			got := sub.Next(t, wait)
			want := Message{Topic: topic, Payload: payload, QoS: tc.wantQoS}
			if got.String() != want.String() {
				t.Fatalf("received %v, want %v", got, want)
			}
			sub.None(t, 50*time.Millisecond)
		})
	}
}

func TestSub_RecordsArrivalOrder(t *testing.T) {
	b := Start(t)
	sub := b.Client(t).Subscribe(t, "order/#", 2)
	pub := b.Client(t)

	const n = 100
	for i := range n {
		pub.Publish(t, fmt.Sprintf("order/%d", i%3), 1, []byte(fmt.Sprint(i)))
	}

	for i := range n {
		if got := string(sub.Next(t, wait).Payload); got != fmt.Sprint(i) {
			t.Fatalf("message %d has payload %s: out of order; all: %v", i, got, sub.All())
		}
	}
	if got := len(sub.All()); got != n {
		t.Fatalf("All() has %d messages, want %d", got, n)
	}
}

func TestSub_OnlyRecordsItsFilter(t *testing.T) {
	b := Start(t)
	c := b.Client(t)
	a := c.Subscribe(t, "a/+", 1)
	other := c.Subscribe(t, "b/#", 1)

	c.Publish(t, "b/1", 1, []byte("b"))
	c.Publish(t, "a/1", 1, []byte("a"))

	if got := a.Next(t, wait); got.Topic != "a/1" {
		t.Fatalf("a/+ got %v", got)
	}
	if got := other.Next(t, wait); got.Topic != "b/1" {
		t.Fatalf("b/# got %v", got)
	}
	if got := c.Inbox().All(); len(got) != 2 {
		t.Fatalf("inbox has %v, want both messages", got)
	}
}

func TestSub_NextMatchingSkipsOthers(t *testing.T) {
	b := Start(t)
	c := b.Client(t)
	sub := c.Subscribe(t, "skip/#", 1)

	for _, p := range []string{"noise-1", "noise-2", "wanted", "after"} {
		c.Publish(t, "skip/x", 1, []byte(p))
	}

	got := sub.NextMatching(t, wait, func(m Message) bool { return string(m.Payload) == "wanted" })
	if string(got.Payload) != "wanted" {
		t.Fatalf("NextMatching returned %v", got)
	}
	if next := sub.Next(t, wait); string(next.Payload) != "after" {
		t.Fatalf("Next after NextMatching = %v, want the message after the match", next)
	}
}

func TestSub_RetainedMessageArrivesAfterSubscribe(t *testing.T) {
	b := Start(t)
	b.Client(t).PublishRetained(t, "retained/x", 1, []byte("kept"))

	got := b.Client(t).Subscribe(t, "retained/x", 2).Next(t, wait)

	if !got.Retained || string(got.Payload) != "kept" || got.QoS != 1 {
		t.Fatalf("got %v, want the retained qos1 message", got)
	}
}

func TestSub_NextFailsOnTimeoutListingWhatArrived(t *testing.T) {
	b := Start(t)
	c := b.Client(t)
	sub := c.Subscribe(t, "timeout/#", 1)
	c.Publish(t, "timeout/a", 1, []byte("unwanted"))
	sub.Next(t, wait)

	msg := expectFatal(t, func(tb testing.TB) {
		sub.NextMatching(tb, 50*time.Millisecond, func(Message) bool { return false })
	})

	if !strings.Contains(msg, "timeout/#") || !strings.Contains(msg, `"unwanted"`) {
		t.Fatalf("failure message %q should name the filter and list the received message", msg)
	}
}

func TestSub_NoneFailsWhenAMessageArrives(t *testing.T) {
	b := Start(t)
	c := b.Client(t)
	sub := c.Subscribe(t, "none/#", 1)

	sub.None(t, 20*time.Millisecond) // nothing published: passes

	msg := expectFatal(t, func(tb testing.TB) {
		go c.pc.Publish("none/late", 1, false, []byte("late"))
		sub.None(tb, wait)
	})
	if !strings.Contains(msg, "none/late") {
		t.Fatalf("failure message %q should show the unexpected message", msg)
	}
}

func TestRestart_KeepsPersistentSessionAndQueuedQoS1Message(t *testing.T) {
	b := Start(t)
	const id = "persistent-device"
	away := b.Client(t, WithClientID(id), WithPersistentSession())
	away.Subscribe(t, "queued/cmd", 1)
	away.Disconnect(t)

	b.Client(t).Publish(t, "queued/cmd", 1, []byte("sent while away"))
	b.Restart(t)
	back := b.Client(t, WithClientID(id), WithPersistentSession())

	if !back.SessionPresent() {
		t.Fatalf("session not present after restart: persistence lost it")
	}
	got := back.Inbox().Next(t, wait)
	if got.Topic != "queued/cmd" || string(got.Payload) != "sent while away" || got.QoS != 1 {
		t.Fatalf("got %v, want the queued qos1 message", got)
	}
	if n := b.Connects(id); n != 2 {
		t.Fatalf("Connects(%q) = %d, want 2", id, n)
	}
}

func TestRestart_ClientsReconnectAndSubscribeAgain(t *testing.T) {
	b := Start(t)
	sub := b.Client(t).Subscribe(t, "after/restart", 1)
	pub := b.Client(t)

	b.Restart(t)
	pub.Publish(t, "after/restart", 1, []byte("hello again"))

	if got := sub.Next(t, wait); string(got.Payload) != "hello again" {
		t.Fatalf("got %v after restart", got)
	}
}

func TestConnects_CountsEachConnectionOfOneClientID(t *testing.T) {
	b := Start(t)
	if n := b.Connects("dev"); n != 0 {
		t.Fatalf("Connects before any client = %d", n)
	}

	b.Client(t, WithClientID("dev")).Disconnect(t)
	b.Client(t, WithClientID("dev2"))
	b.Client(t, WithClientID("other-dev"))
	b.Client(t, WithClientID("dev"))

	for id, want := range map[string]int{"dev": 2, "dev2": 1, "other-dev": 1, "de": 0} {
		if got := b.Connects(id); got != want {
			t.Errorf("Connects(%q) = %d, want %d", id, got, want)
		}
	}
}

func TestStopThenStart_ServesOnTheSamePort(t *testing.T) {
	b := Start(t)
	addr := b.Addr

	b.Stop(t)
	if b.Running() {
		t.Fatal("Running() after Stop")
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("%s still accepts connections after Stop", addr)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after Stop: %v, want connection refused", err)
	}

	b.Start(t)
	if b.Addr != addr {
		t.Fatalf("Addr after Start = %s, want %s", b.Addr, addr)
	}
	c := b.Client(t)
	sub := c.Subscribe(t, "again", 1)
	c.Publish(t, "again", 1, []byte("x"))
	sub.Next(t, wait)
}

func TestTopicMatches(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+/c", "a/b/c", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"+", "", true},
		{"$share/g/a/+", "a/b", true},
		{"kp1/app/cmx/tok/config/json/status", "kp1/app/cmx/tok/config/json/status", true},
	}
	for _, tc := range tests {
		if got := TopicMatches(tc.filter, tc.topic); got != tc.want {
			t.Errorf("TopicMatches(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

// expectFatal runs fn and returns its failure message; it fails the test if
// fn did not fail.
func expectFatal(t *testing.T, fn func(tb testing.TB)) string {
	t.Helper()
	msg := testkit.Failure(t, fn)
	if msg == "" {
		t.Fatal("the helper did not fail the test")
	}
	return msg
}

func TestStartWith_LinesConfigureABridgeBetweenTwoBrokers(t *testing.T) {
	remote := Start(t)
	local := StartWith(t, Options{Lines: []string{
		"connection to-remote",
		"address " + remote.Addr,
		"remote_clientid to-remote",
		"topic bridged/# both 1",
	}})
	got := remote.Client(t).Subscribe(t, "bridged/#", 2)
	// Once the bridge has subscribed on the remote broker, it is connected in both directions.
	remote.WaitLog(t, "Received SUBSCRIBE from to-remote", 1, wait)
	local.Client(t).Publish(t, "bridged/x", 1, []byte("across"))
	if m := got.Next(t, wait); m.Topic != "bridged/x" || string(m.Payload) != "across" {
		t.Fatalf("got %v through the bridge", m)
	}
}

func TestDial_RecordsFromABrokerThisPackageDoesNotRun(t *testing.T) {
	b := Start(t)
	c := Dial(t, b.URL)
	sub := c.Subscribe(t, "dialed/#", 1)
	if err := b.Client(t).TryPublish("dialed/a", 1, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if m := sub.Next(t, wait); string(m.Payload) != "hi" {
		t.Fatalf("got %v", m)
	}
	c.Disconnect(t) // no broker log to wait for
	if c.Connected() {
		t.Fatalf("still connected after Disconnect")
	}
}

func TestSub_FollowSeesEarlierAndLaterMessagesInOrder(t *testing.T) {
	b := Start(t)
	sub := b.Client(t).Subscribe(t, "follow/#", 1)
	pub := b.Client(t)
	pub.Publish(t, "follow/1", 1, []byte("1"))
	sub.Next(t, wait) // Follow has its own cursor

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan string, 3)
	go sub.Follow(ctx, func(m Message) { seen <- string(m.Payload) })
	pub.Publish(t, "follow/2", 1, []byte("2"))
	pub.Publish(t, "follow/3", 1, []byte("3"))
	for _, want := range []string{"1", "2", "3"} {
		select {
		case got := <-seen:
			if got != want {
				t.Fatalf("Follow gave %q, want %q", got, want)
			}
		case <-time.After(wait):
			t.Fatalf("Follow did not give %q within %v", want, wait)
		}
	}
}

// A broker that never says it runs is given up on at the deadline with what could explain it:
// whether its log said running, and the process's state.
func TestLaunch_ABrokerThatStaysSilentTimesOutSayingWhatItWasDoing(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "mosquitto")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'Warning: silent broker'\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := &Broker{Dir: dir, bin: fake, startWait: 2 * time.Second,
		confPath: filepath.Join(dir, "mosquitto.conf"), logPath: filepath.Join(dir, "mosquitto.log")}
	b.setPort(FreePort(t))
	err := b.launch()
	if !errors.Is(err, errStartTimeout) {
		t.Fatalf("launch: %v; want errStartTimeout", err)
	}
	for _, want := range []string{`no "running" line`, "process state S", "Warning: silent broker"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("launch: %q lacks %q", err, want)
		}
	}
}
