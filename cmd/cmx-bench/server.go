package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/cmx"
)

// event is what the server side sees of an agent: a confirmation or a pull, timestamped on arrival.
type event struct {
	pull   bool
	app    string
	token  string
	id     string // the confirmation's id (canonical JSON text), "" for pulls
	status string
	at     time.Time
}

// server plays the Kaa server: it publishes pushes and timestamps every confirmation and pull of
// every application on the broker.
type server struct {
	c      mqtt.Client
	events chan event
}

const opTimeout = 30 * time.Second

func newServer(url, clientID string) (*server, error) {
	s := &server{events: make(chan event, 1<<18)}
	o := mqtt.NewClientOptions().
		AddBroker(url).
		SetClientID(clientID).
		SetCleanSession(true).
		SetOrderMatters(false).
		SetAutoReconnect(false).
		SetKeepAlive(60 * time.Second).
		SetConnectTimeout(10 * time.Second).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { s.record(m) })
	s.c = mqtt.NewClient(o)
	if err := wait(s.c.Connect()); err != nil {
		return nil, fmt.Errorf("server connect: %w", err)
	}
	filters := map[string]byte{"kp1/+/cmx/+/json/status": 1, "kp1/+/cmx/+/pull/json": 1}
	if err := wait(s.c.SubscribeMultiple(filters, nil)); err != nil {
		s.c.Disconnect(0)
		return nil, fmt.Errorf("server subscribe: %w", err)
	}
	return s, nil
}

func (s *server) close() { s.c.Disconnect(100) }

func wait(t mqtt.Token) error {
	if !t.WaitTimeout(opTimeout) {
		return errors.New("no answer from the broker within 30s")
	}
	return t.Error()
}

func (s *server) record(m mqtt.Message) {
	at := time.Now()
	lv := strings.Split(m.Topic(), "/")
	if len(lv) < 6 {
		return
	}
	ev := event{app: lv[1], token: lv[3], at: at}
	if lv[4] == "pull" {
		ev.pull = true
	} else {
		id, status, err := cmx.ParseConfirmation(m.Payload())
		if err != nil {
			return
		}
		ev.id, ev.status = id.Key(), status
	}
	s.events <- ev
}

// push publishes a 3/CMX push at QoS 1 without waiting for the broker's acknowledgement: the clock
// runs from the publish call to the confirmation.
func (s *server) push(app, token string, payload []byte) mqtt.Token {
	return s.c.Publish(cmx.PushTopic(cmx.Prefix(app, "cmx", token), 0), 1, false, payload)
}

// drain drops the events seen so far.
func (s *server) drain() {
	for {
		select {
		case <-s.events:
		default:
			return
		}
	}
}

// waitStatus waits for the confirmation of id from app/token and returns its arrival time.
func (s *server) waitStatus(app, token, id string, timeout time.Duration) (event, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case ev := <-s.events:
			if !ev.pull && ev.app == app && ev.token == token && ev.id == id {
				return ev, nil
			}
		case <-deadline.C:
			return event{}, fmt.Errorf("no confirmation of %s from %s/%s within %v", id, app, token, timeout)
		}
	}
}

// collect gathers events of app until done says it has enough, or the timeout.
func (s *server) collect(app string, timeout time.Duration, done func(event) bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case ev := <-s.events:
			if ev.app == app && done(ev) {
				return nil
			}
		case <-deadline.C:
			return fmt.Errorf("%s: timed out after %v", app, timeout)
		}
	}
}
