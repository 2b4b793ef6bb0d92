package cloud

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/cmx"
)

// ErrNoConfirmation is returned by Push when the wait ended without an answer.
var ErrNoConfirmation = errors.New("no confirmation")

// Push sends body to the endpoint token with id and, when wait > 0, waits that long for the
// confirmation. The push goes to its own request id topic, so the answer cannot be confused with
// another push's.
func Push(ctx context.Context, o Options, token string, id cmx.ID, body []byte, wait time.Duration) (Confirmation, error) {
	return push(ctx, o, token, id, body, false, wait)
}

// PushRaw sends payload as it is, the whole message and not only the body, so a test or an operator
// can see how the agent answers malformed input; id is what the answer is matched with.
func PushRaw(ctx context.Context, o Options, token string, id cmx.ID, payload []byte, wait time.Duration) (Confirmation, error) {
	return push(ctx, o, token, id, payload, true, wait)
}

func push(ctx context.Context, o Options, token string, id cmx.ID, body []byte, raw bool, wait time.Duration) (Confirmation, error) {
	o.defaults()
	if o.AppVersion == "" {
		return Confirmation{}, errors.New("push: the application version is required")
	}
	if !cmx.ValidLevel(token) {
		return Confirmation{}, fmt.Errorf("push: %q cannot be a topic level", token)
	}
	dia, err := newDialect(o.Dialect)
	if err != nil {
		return Confirmation{}, err
	}
	reqID := 1 + rand.Uint64N(1<<53)
	topic, payload, err := dia.push(cmx.Prefix(o.AppVersion, o.Extension, token), id, []byte("[]"), reqID)
	if !raw {
		topic, payload, err = dia.push(cmx.Prefix(o.AppVersion, o.Extension, token), id, body, reqID)
	} else {
		payload = body
	}
	if err != nil {
		return Confirmation{}, fmt.Errorf("push: %w", err)
	}
	answers := make(chan Confirmation, 16)
	handler := func(_ mqtt.Client, m mqtt.Message) {
		t, ok := cmx.SplitTopic(m.Topic(), o.AppVersion, o.Extension)
		if !ok {
			return
		}
		c, ok, err := dia.confirmation(t.Rest, m.Payload())
		if !ok || err != nil {
			return
		}
		c.Token = t.Token
		select {
		case answers <- c:
		default:
		}
	}
	client, err := connect(ctx, o, "cmxctl-push-"+randomID(), nil)
	if err != nil {
		return Confirmation{}, fmt.Errorf("push: %w", err)
	}
	defer client.Disconnect(250)
	if wait > 0 {
		// Subscribed before the push goes out, so the answer cannot come first.
		if err := waitTok(ctx, client.Subscribe(dia.statusTopic(topic), 1, handler), "push: subscribe"); err != nil {
			return Confirmation{}, err
		}
	}
	if err := waitTok(ctx, client.Publish(topic, 1, false, payload), "push: publish"); err != nil {
		return Confirmation{}, err
	}
	o.Logger.Debug("pushed", "topic", topic, "id", id.Text(), "bytes", len(body))
	if wait <= 0 {
		return Confirmation{}, nil
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case c := <-answers:
			if c.ID.Key() != id.Key() {
				continue
			}
			return c, nil
		case <-timer.C:
			return Confirmation{}, fmt.Errorf("%w within %v (an agent with a persistent session still gets the push when it connects)", ErrNoConfirmation, wait)
		case <-ctx.Done():
			return Confirmation{}, ctx.Err()
		}
	}
}

func waitTok(ctx context.Context, tok mqtt.Token, what string) error { return wait(ctx, tok, what) }
