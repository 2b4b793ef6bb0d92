package cloud

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
)

// ErrNoConfirmation is returned by Push when the wait ended without an answer.
var ErrNoConfirmation = errors.New("no confirmation")

// Push sends body to the configuration tg with id and, when wait > 0, waits that long for the
// confirmation. In cmx3 body is the entries array and the push goes to its own request id topic, so
// the answer cannot be confused with another push's; in cmp7 body is the config value, id the
// configId, the push goes to the unsolicited status topic and the answer is the applied report
// with that configId.
func Push(ctx context.Context, o Options, tg Target, id cmx.ID, body []byte, wait time.Duration) (Confirmation, error) {
	return push(ctx, o, tg, id, body, false, wait)
}

// PushRaw sends payload as it is, the whole message and not only the body, so a test or an operator
// can see how the agent answers malformed input; id is what the answer is matched with.
func PushRaw(ctx context.Context, o Options, tg Target, id cmx.ID, payload []byte, wait time.Duration) (Confirmation, error) {
	return push(ctx, o, tg, id, payload, true, wait)
}

func push(ctx context.Context, o Options, tg Target, id cmx.ID, body []byte, raw bool, wait time.Duration) (Confirmation, error) {
	o.defaults()
	dia, err := checkTarget(o, tg)
	if err != nil {
		return Confirmation{}, err
	}
	prefix := cmx.Prefix(o.AppVersion, o.Extension, tg.Token)
	topic, payload, err := pushMessage(dia, prefix, tg, id, body, raw)
	if err != nil {
		return Confirmation{}, err
	}
	answers := make(chan Confirmation, 16)
	client, err := connect(ctx, o, "cmxctl-push-"+randomID(), nil)
	if err != nil {
		return Confirmation{}, err
	}
	defer client.Disconnect(250)
	if wait > 0 {
		// Subscribed before the push goes out, so the answer cannot come first.
		if err := waitTok(ctx, client.Subscribe(dia.answerFilter(prefix, tg, topic), 1, answerHandler(o, dia, tg, answers)), "subscribe"); err != nil {
			return Confirmation{}, err
		}
	}
	if err := waitTok(ctx, client.Publish(topic, 1, false, payload), "publish"); err != nil {
		return Confirmation{}, err
	}
	o.Logger.Debug("pushed", "topic", topic, "id", id.Text(), "bytes", len(body))
	if wait <= 0 {
		return Confirmation{}, nil
	}
	return awaitAnswer(ctx, dia, tg, id, answers, wait)
}

// checkTarget refuses a push the agent could not take (no application version, a token that is
// not a topic level, a name outside cmp7 or not a configuration name), and returns the dialect.
func checkTarget(o Options, tg Target) (dialect, error) {
	if o.AppVersion == "" {
		return nil, inputError("the application version is required")
	}
	if !cmx.ValidLevel(tg.Token) {
		return nil, inputError("%q cannot be a topic level", tg.Token)
	}
	dia, err := newDialect(o.Dialect)
	if err != nil {
		return nil, err
	}
	if tg.Name != "" && o.Dialect != config.DialectCMP7 {
		return nil, inputError("named configurations (%q) exist only in cmp7", tg.Name)
	}
	if tg.Name != "" && !cmx.ValidConfigName(tg.Name) {
		return nil, inputError("%q cannot name a configuration (^[a-zA-Z0-9_-]+$, not all digits, not status or error)", tg.Name)
	}
	return dia, nil
}

// pushMessage returns the push's topic and payload in the dialect, under a new request id; a raw
// payload goes as it is, only the topic is the dialect's.
func pushMessage(dia dialect, prefix string, tg Target, id cmx.ID, body []byte, raw bool) (topic string, payload []byte, err error) {
	reqID := 1 + rand.Uint64N(1<<53)
	if raw {
		topic, _, err = dia.push(prefix, tg, id, []byte("[]"), reqID, "")
		return topic, body, err
	}
	return dia.push(prefix, tg, id, body, reqID, "")
}

// answerHandler passes on the agent's confirmations for tg's token to answers, never blocking
// (paho's router calls it).
func answerHandler(o Options, dia dialect, tg Target, answers chan<- Confirmation) mqtt.MessageHandler {
	return func(_ mqtt.Client, m mqtt.Message) {
		t, ok := cmx.SplitTopic(m.Topic(), o.AppVersion, o.Extension)
		if !ok {
			return
		}
		c, ok, err := dia.confirmation(t, m.Payload())
		if !ok || err != nil || c.Token != tg.Token {
			return
		}
		select {
		case answers <- c:
		default:
		}
	}
}

// awaitAnswer waits up to wait for the answer to the push of id to tg.
func awaitAnswer(ctx context.Context, dia dialect, tg Target, id cmx.ID, answers <-chan Confirmation, wait time.Duration) (Confirmation, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case c := <-answers:
			if dia.answers(c, tg, id) {
				return c, nil
			}
		case <-timer.C:
			return Confirmation{}, fmt.Errorf("%w within %v (an agent with a persistent session still gets the push when it connects)", ErrNoConfirmation, wait)
		case <-ctx.Done():
			return Confirmation{}, ctx.Err()
		}
	}
}

func waitTok(ctx context.Context, tok mqtt.Token, what string) error { return wait(ctx, tok, what) }
