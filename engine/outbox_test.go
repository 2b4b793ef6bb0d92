package engine

import (
	"slices"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/clock"
	"github.com/cmx-agent/cmx-agent/internal/clock/clocktest"
)

func topicsOf(ms []OutMsg) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Topic)
	}
	return out
}

func TestOutbox_ATopicWhosePublishEndsConnectionsInARowIsSetAsideForHoursThatDouble(t *testing.T) {
	t.Parallel()
	clk := clocktest.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	o := newOutbox(0, []OutMsg{{Seq: 1, Endpoint: "a", Topic: "bad", QoS: 1}, {Seq: 2, Endpoint: "b", Topic: "good", QoS: 1}}, clk)
	gen := uint64(0)
	next := func() []OutMsg { gen++; return o.Next(gen, 10) }

	// The first close counts against everything in flight; what is then acknowledged is cleared.
	sent := next()
	if got := topicsOf(sent); !slices.Equal(got, []string{"bad", "good"}) {
		t.Fatalf("sent %v, want both", got)
	}
	if a := o.Ended(sent); a != nil {
		t.Fatalf("set aside after one close: %+v", a)
	}
	if !o.Suspect("bad") || !o.Suspect("good") {
		t.Fatal("the topics in flight at the close are not suspect")
	}
	o.Delivered(sent[1])
	if o.Suspect("good") {
		t.Error("an acknowledged topic is still suspect")
	}

	// Two more connections ended with it in flight: set aside, for an hour.
	if a := o.Ended(next()); a != nil {
		t.Fatalf("set aside after two closes: %+v", a)
	}
	a := o.Ended(next())
	if want := []SetAside{{Topic: "bad", Endpoint: "a", Closes: PoisonCloses, Wait: time.Hour}}; !slices.Equal(a, want) {
		t.Fatalf("set aside %+v, want %+v", a, want)
	}
	if got := next(); len(got) != 0 {
		t.Errorf("sent %v while set aside", topicsOf(got))
	}
	if n := o.setAside(); n != 1 {
		t.Errorf("setAside() = %d, want 1", n)
	}
	// A newer answer to the same topic waits with it.
	o.add(OutMsg{Endpoint: "a", Topic: "bad", QoS: 1}, true)
	if got := next(); len(got) != 0 {
		t.Errorf("sent %v while its topic is set aside", topicsOf(got))
	}

	// Once the wait is over it goes again; one more close sets it aside for twice as long, up to a
	// day.
	for _, wait := range []time.Duration{2 * time.Hour, 4 * time.Hour, 8 * time.Hour, 16 * time.Hour, 24 * time.Hour, 24 * time.Hour} {
		prev := o.poisoned["bad"].wait
		clk.Advance(prev - time.Second)
		if got := next(); len(got) != 0 {
			t.Fatalf("sent %v a second before its wait of %v was over", topicsOf(got), prev)
		}
		clk.Advance(time.Second)
		got := next()
		if len(got) != 2 {
			t.Fatalf("after %v: sent %v, want both answers to the topic", prev, topicsOf(got))
		}
		if a := o.Ended(got); len(a) != 1 || a[0].Wait != wait {
			t.Fatalf("set aside %+v, want for %v", a, wait)
		}
	}

	// An acknowledgement clears the topic: the answers flow again.
	clk.Advance(24 * time.Hour)
	got := next()
	o.Delivered(got[0])
	if o.Suspect("bad") {
		t.Error("still suspect after an acknowledgement")
	}
	if got := next(); !slices.Equal(topicsOf(got), []string{"bad"}) {
		t.Errorf("sent %v after the acknowledgement, want the other answer", topicsOf(got))
	}
	if n := o.setAside(); n != 0 {
		t.Errorf("setAside() = %d after the acknowledgement, want 0", n)
	}
}

func TestOutbox_AnswersToEachNewRequestCountAsOneTopic(t *testing.T) {
	t.Parallel()
	o := newOutbox(0, nil, clock.Real{})
	// The answer to each pull has the pull's id in its topic; a refusal is of the resource path.
	for i, topic := range []string{"kp1/a/cmx/t/json/11/status", "kp1/a/cmx/t/json/12/status", "kp1/a/cmx/t/json/13/status"} {
		o.add(OutMsg{Endpoint: "t", Topic: topic, QoS: 1}, true)
		sent := o.Next(uint64(i+1), 10)
		if i > 0 && !o.Suspect(topic) {
			t.Errorf("%s: not suspect after %d closes with answers to other pulls", topic, i)
		}
		a := o.Ended(sent)
		if i < PoisonCloses-1 && a != nil || i == PoisonCloses-1 && (len(a) != 1 || a[0].Topic != "kp1/a/cmx/t/json/+/status") {
			t.Errorf("close %d set aside %+v", i+1, a)
		}
	}
	o.add(OutMsg{Endpoint: "t", Topic: "kp1/a/cmx/t/json/14/status", QoS: 1}, true)
	o.add(OutMsg{Endpoint: "t", Topic: "kp1/a/cmx/t/json/status", QoS: 1}, true)
	if got := topicsOf(o.Next(9, 10)); !slices.Equal(got, []string{"kp1/a/cmx/t/json/status"}) {
		t.Errorf("sent %v, want only the answer to a push", got)
	}
}
